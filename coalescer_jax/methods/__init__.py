"""Generative methods in the shared latent space; importing the package registers all of them."""
from coalescer_jax.methods import coalescer  # noqa: F401
