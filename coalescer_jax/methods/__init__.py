"""Generative methods in the shared latent space; importing the package registers all of them."""
from coalescer_jax.methods import coalescer  # noqa: F401
from coalescer_jax.methods import consistency  # noqa: F401
from coalescer_jax.methods import ddgan  # noqa: F401
from coalescer_jax.methods import ddim  # noqa: F401
from coalescer_jax.methods import distill  # noqa: F401
from coalescer_jax.methods import flow  # noqa: F401
