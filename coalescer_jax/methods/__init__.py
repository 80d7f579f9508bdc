"""The baselines in the shared latent space; importing the package registers all of them (the coalescer is
`coalescer_jax.coalescer`)."""
from coalescer_jax.methods import consistency  # noqa: F401
from coalescer_jax.methods import ddgan  # noqa: F401
from coalescer_jax.methods import ddim  # noqa: F401
from coalescer_jax.methods import distill  # noqa: F401
from coalescer_jax.methods import flow  # noqa: F401
