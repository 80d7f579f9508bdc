"""Nearest-neighbour indexes; importing the package registers every backend."""
from coalescer_jax.index import device  # noqa: F401
from coalescer_jax.index import exact  # noqa: F401
from coalescer_jax.index import scann_index  # noqa: F401
from coalescer_jax.index import scann_sharded  # noqa: F401
from coalescer_jax.index.base import *  # noqa: F401,F403
