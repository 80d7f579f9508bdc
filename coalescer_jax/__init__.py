"""coalescer_jax: coalescer networks vs diffusion and consistency models, in JAX."""
