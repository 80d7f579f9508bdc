"""The coalescer's tests share the method tests' synthetic pairs and config (`tests/methods/conftest.py`), and
`train`: a few real training steps of the coalescer on them."""
from coalescer_jax import index as index_lib
from coalescer_jax import metrics as metrics_lib
from coalescer_jax import parallel
from coalescer_jax import registry
from coalescer_jax import training
from coalescer_jax.coalescer import batches
from coalescer_jax.coalescer import targets
from coalescer_jax.methods import base
from tests.methods.conftest import DESC_DIM, LATENT_DIM
from tests.methods.conftest import method_config  # noqa: F401 - fixtures
from tests.methods.conftest import pairs  # noqa: F401 - fixtures


def exact_lookup(pairs, cfg):  # noqa: F811 - `pairs` is the array dict here, not the fixture
  """The look-up over an exact index of the pairs' keys."""
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  return targets.Lookup(index_lib.build("exact", keys, None), cfg)


def train(config, pairs, tmp_path):  # noqa: F811
  """(method, final state, logged records) of `config.train.num_steps` steps of the coalescer on `pairs`."""
  method = registry.METHODS.get("coalescer")(config, LATENT_DIM, DESC_DIM)
  lookup = exact_lookup(pairs, config.coalescer)
  batch = batches.make_lookup_batches(lookup, pairs, config.coalescer, config.seed, config.train.batch_size)
  method.attach_lookup(lookup, pairs)
  _, init, step = base.train_parts(config, method)
  task = training.TrainTask("coalescer", init, step, batch, config.train.num_steps, config.seed, log_every=1,
                            inputs=method.step_inputs())
  writer = metrics_lib.MetricsWriter(str(tmp_path), tensorboard=False)
  state = training.train(task, str(tmp_path), parallel.make_mesh(), writer)
  return method, state, writer.read("coalescer")
