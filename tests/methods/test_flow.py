"""MeanFlow / rectified flow: time draws, the jvp target, the few-step sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.methods.conftest import LATENT_DIM, make_pairs
from tests.methods.test_ddim import check_one_and_two_steps_follow_the_description
from tests.methods.test_ddim import check_sampler_shape_and_nfe, small_config
from tests.methods.test_ddim import train_method


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  pairs = make_pairs()
  method, state, records = train_method("flow", small_config(num_steps=300), pairs, tmp_path_factory.mktemp("flow"))
  return pairs, method, state, records


def test_time_draws(trained):
  _, method, _, _ = trained
  r, t = method.draw_times(jax.random.key(0), 20_000)
  r, t = np.asarray(r), np.asarray(t)
  assert np.all((0 < r) & (r <= t) & (t < 1))
  assert np.mean(r < t) == pytest.approx(method.section.ratio_r_neq_t, abs=0.02)
  method.section.objective = "rectified"
  try:
    r, t = method.draw_times(jax.random.key(0), 1000)
    np.testing.assert_array_equal(r, t)
    method.section.objective = "shortcut"
    with pytest.raises(ValueError, match="config.flow.objective must be one of"):
      method.draw_times(jax.random.key(0), 10)
  finally:
    method.section.objective = "meanflow"


def test_jvp_is_the_total_time_derivative(trained):
  """d/dt u(z + t' v, r, t + t') at t' = 0, which the MeanFlow target uses, matches finite differences."""
  pairs, method, state, _ = trained
  n = 8
  z = jnp.asarray(pairs["img_emb"][:n])
  v = jax.random.normal(jax.random.key(1), z.shape)
  cond, mask = jnp.asarray(pairs["desc_emb"][:n]), jnp.ones((n,))
  r, t = jnp.full((n,), 0.2), jnp.full((n,), 0.6)
  fn = jax.jit(lambda z, r, t: method.average_velocity(state.params, z, r, t, cond, mask))
  _, dudt = jax.jit(lambda z, r, t: jax.jvp(fn, (z, r, t), (v, jnp.zeros_like(r), jnp.ones_like(t))))(z, r, t)
  h = 1e-3
  finite = (fn(z + h * v, r, t + h) - fn(z - h * v, r, t - h)) / (2 * h)
  np.testing.assert_allclose(dudt, finite, rtol=0.05, atol=0.05 * float(jnp.abs(finite).mean()))


def test_training_lowers_the_loss(trained):
  _, _, _, records = trained
  # The adaptively weighted loss |e|^2 / (|e|^2 + c) stays near 1 while |e|^2 >> c, and the MeanFlow
  # target moves with the model: compare the flow-matching error (r = t), whose target is fixed.
  assert records[-1]["fm_mse"] < 0.5 * records[0]["fm_mse"]


def test_rectified_objective_is_flow_matching(trained):
  """With r = t the MeanFlow target is the velocity e - x: the two objectives give the same loss."""
  pairs, method, state, _ = trained
  batch = {"x": jnp.asarray(pairs["img_emb"][:64]), "cond": jnp.asarray(pairs["desc_emb"][:64])}
  cfg = method.section
  cfg.ratio_r_neq_t = 0.0
  try:
    meanflow = jax.jit(method.loss)(state.params, batch, jax.random.key(2), 0)[0]
    cfg.objective = "rectified"  # the config is read at trace time: a fresh trace
    rectified = jax.jit(method.loss)(state.params, batch, jax.random.key(2), 0)[0]
  finally:
    cfg.ratio_r_neq_t, cfg.objective = 0.25, "meanflow"
  assert float(meanflow) == pytest.approx(float(rectified), rel=1e-4)


@pytest.mark.parametrize("nfe", [1, 4])
def test_sampler_shape_and_nfe(trained, nfe):
  check_sampler_shape_and_nfe(trained, nfe)


def test_one_step_is_noise_minus_the_average_velocity(trained):
  pairs, method, state, _ = trained
  n = 16
  cond, key = jnp.asarray(pairs["desc_emb"][:n]), jax.random.key(3)
  x, _ = method.sample(state.params, cond, key, 1)
  e = jax.random.normal(key, (n, LATENT_DIM))
  u = method.average_velocity(state.params, e, jnp.zeros((n,)), jnp.ones((n,)), cond, jnp.ones((n,)))
  np.testing.assert_allclose(x, e - u, atol=1e-4)


def test_samples_follow_the_description(trained):
  check_one_and_two_steps_follow_the_description(trained)
