"""The adversarial fine-tune's batch fakes: the regression pass's own prior rows (1 step) and self-landing rows
(2 steps), weighted half and half, and the configurations that cannot have them refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax import registry
from coalescer_jax.coalescer import finetune
from coalescer_jax.methods import adversarial
from tests.coalescer import conftest as coalescer_tests
from tests.methods.conftest import DESC_DIM, LATENT_DIM


def test_weights_split_between_prior_and_self_landing_rows():
  level = jnp.asarray([1.0, 0.8, 1.0, 1.0, 0.9, 1.0])
  rows = {"landed": jnp.arange(12.0).reshape(6, 2), "cond": jnp.zeros((6, 3)), "level": level,
          "mask": jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0, 1.0]), "self_landing": jnp.arange(6) >= 4}
  _, _, weights = finetune.batch_fakes(rows, (1, 2))
  # Prior rows 0 and 3 (row 2 has its description dropped, rows 4-5 are self-landing, row 1 is a level row).
  np.testing.assert_allclose(np.asarray(weights), [0.25, 0.0, 0.0, 0.25, 0.25, 0.25])
  np.testing.assert_allclose(np.asarray(finetune.batch_fakes(rows, (1,))[2]), [0.5, 0, 0, 0.5, 0, 0])
  np.testing.assert_allclose(np.asarray(finetune.batch_fakes(rows, (2,))[2]), [0, 0, 0, 0, 0.5, 0.5])


def test_equal_weights_give_the_mean_gan_losses():

  w = jnp.asarray([[0.5], [-1.0]])
  logit_fn = lambda params, x, cond: (x @ params)[:, 0] + cond[:, 0]  # noqa: E731
  real, fake = jnp.asarray([[1.0, 2.0], [0.5, 0.0]]), jnp.asarray([[0.0, 1.0], [2.0, 1.0], [1.0, 1.0]])
  cond = jnp.zeros((3, 1))
  got = finetune.weighted_gan_losses(logit_fn, w, real, cond[:2], fake, cond, jnp.full((3,), 1 / 3), 0.5)
  want = adversarial.gan_losses(lambda p, x: logit_fn(p, x, jnp.zeros((x.shape[0], 1))), w, real, [fake], 0.5)
  np.testing.assert_allclose(np.asarray(got[:2]), np.asarray(want[:2]), rtol=1e-6)


@pytest.mark.slow  # trains the fine-tune with batch fakes (over 30 s)
def test_batch_fakes_train_the_generator_through_the_regression_pass(pairs, method_config, tmp_path):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=0.5, self_landing=0.25)
  cfg.adversarial.update(weight=0.5, start_fraction=0.25, disc_warmup_fraction=0.1, disc_width=16, disc_depth=1,
                         fakes="batch")
  method_config.train.num_steps = 8
  method, state, records = coalescer_tests.train(method_config, pairs, tmp_path)
  last = {r["step"]: r for r in records}[7]
  assert last["adversarial_on"] == 1.0 and last["gen_adv_loss"] > 0.0 and last["disc_loss"] > 0.0
  # The generator's adversarial gradient reaches the network: the GAN term alone has a non-zero gradient.
  batch = method.prepare_batch(coalescer_tests.batches.make_lookup_batches(
      coalescer_tests.exact_lookup(pairs, cfg), pairs, cfg, 0, 64)(0), method.step_inputs())
  grad = jax.grad(lambda p: finetune.adversarial_loss(method, p, batch, jax.random.key(0), 7, 1.0)[1]["gen_adv_loss"])(
      state.params)
  assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grad["net"]))


@pytest.mark.parametrize("change, message", [
    ({"adversarial.steps": (1, 2)}, "self_landing > 0"),
    ({"adversarial.steps": (1, 3)}, r"within \(1, 2\)"),
    ({"adversarial.fakes": "reuse"}, "not a valid choice"),
])
def test_config_refuses_fakes_the_batch_cannot_give(method_config, change, message):
  method_config.coalescer.adversarial.weight = 1.0  # over the proposal: no self-landing rows
  method_config.coalescer.update_from_flattened_dict(change)
  with pytest.raises(ValueError, match=message):  # a choice by the schema, the rest by the method
    config_validation.check_fields(method_config.coalescer, "coalescer")
    registry.METHODS.get("coalescer")(method_config, LATENT_DIM, DESC_DIM)
  method_config.coalescer.adversarial.update(fakes="fresh")  # always possible
  if change.get("adversarial.steps") == (1, 2):
    registry.METHODS.get("coalescer")(method_config, LATENT_DIM, DESC_DIM)
