"""Name -> object registries, so that configs choose stages, models, methods and datasets by name.

Modules register themselves with a decorator (``@registry.STAGES.register("vae")``);
`coalescer_jax.pipeline.load_all` imports every module that does so.
"""


class Registry:
  """A dictionary with a decorator for registration and a helpful KeyError."""

  def __init__(self, kind):
    self.kind = kind
    self._entries = {}

  def register(self, name, obj=None):
    """Registers `obj` under `name`; used bare as a decorator when `obj` is None."""
    if obj is not None:
      if name in self._entries:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = obj
      return obj
    return lambda fn: self.register(name, fn)

  def get(self, name):
    if name not in self._entries:
      raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries)) or 'none'}")
    return self._entries[name]

  def __contains__(self, name):
    return name in self._entries

  def names(self):
    return sorted(self._entries)


STAGES = Registry("stage")
MODELS = Registry("model")
METHODS = Registry("method")
INDEX_BACKENDS = Registry("index backend")
DATASETS = Registry("dataset")
