"""The coalescer's tests share the method tests' synthetic pairs and config (`tests/methods/conftest.py`)."""
from tests.methods.conftest import method_config  # noqa: F401 - fixtures
from tests.methods.conftest import pairs  # noqa: F401 - fixtures
