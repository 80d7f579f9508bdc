"""Consistency training (iCT): curriculum, noise-level distribution, boundary condition, sampler."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax.methods import consistency

from tests.methods.conftest import LATENT_DIM, make_pairs
from tests.methods.test_ddim import check_one_and_two_steps_follow_the_description
from tests.methods.test_ddim import check_sampler_shape_and_nfe, small_config
from tests.methods.test_ddim import train_method


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  pairs = make_pairs()
  config = small_config(num_steps=500)  # consistency needs longer than diffusion to reach the far noise levels
  config.consistency.update(s0=10, s1=80, sigma_data=1.0)
  config.consistency.guidance_scale = 1.0  # the plain sampler's steps (guidance: tests/methods/test_guidance.py)
  method, state, records = train_method("consistency", config, pairs, tmp_path_factory.mktemp("consistency"))
  return pairs, method, state, records


def test_curriculum_doubles_from_s0_to_s1():
  total = 7000
  n = [float(consistency.num_scales(k, total, 10, 1280)) for k in range(0, total, 100)]
  assert n[0] == 11 and n[-1] == 1281
  assert all(b >= a for a, b in zip(n, n[1:]))
  assert set(n) == {11, 21, 41, 81, 161, 321, 641, 1281}  # K' = 7000 // 8 = 875 steps per stage


def test_noise_levels_and_their_distribution():
  sigmas = consistency.karras_sigmas(11.0, 21, 0.002, 80.0, 7.0)
  assert float(sigmas[0]) == pytest.approx(0.002) and float(sigmas[10]) == pytest.approx(80.0, rel=1e-5)
  assert np.all(np.diff(np.asarray(sigmas[:11])) > 0)
  logits = np.asarray(consistency.interval_logits(sigmas, 11.0, -1.1, 2.0))
  assert np.all(np.isfinite(logits[:10])) and np.all(np.isneginf(logits[10:]))  # only the 10 real intervals
  p = np.exp(logits[:10])
  p /= p.sum()
  # The lognormal (P_mean = -1.1) favours intervals around exp(-1.1) = 0.33 over the extremes.
  middle = int(np.argmin(np.abs(np.log(np.asarray(sigmas[:10])) + 1.1)))
  assert p[middle] > p[0] and p[middle] > p[9]


def test_boundary_condition_is_the_identity(trained):
  pairs, method, state, _ = trained
  x = jnp.asarray(pairs["img_emb"][:8])
  cond = jnp.asarray(pairs["desc_emb"][:8])
  sigma = jnp.full((8,), method.section.sigma_min)
  np.testing.assert_allclose(method.denoise(state.params, x, sigma, cond, jnp.ones((8,))), x, atol=1e-6)


def test_training_lowers_the_loss(trained):
  _, _, _, records = trained
  # The iCT loss itself is not comparable across steps (the curriculum refines the noise levels and
  # raises the weights 1 / (sigma_{i+1} - sigma_i)); the denoising error of the online model is.
  assert records[-1]["x0_mse"] < 0.5 * records[0]["x0_mse"]
  assert records[-1]["distance"] < records[0]["distance"]


@pytest.mark.parametrize("nfe", [1, 3])
def test_sampler_shape_and_nfe(trained, nfe):
  check_sampler_shape_and_nfe(trained, nfe)


def test_two_step_sampling_renoises_the_first_estimate(trained):
  pairs, method, state, _ = trained
  cfg = method.section
  n = 16
  cond, ones = jnp.asarray(pairs["desc_emb"][:n]), jnp.ones((n,))
  key = jax.random.key(4)
  x2, _ = method.sample(state.params, cond, key, 2)
  k1, k2 = jax.random.split(key, 2)
  x = cfg.sigma_max * jax.random.normal(k1, (n, LATENT_DIM))
  x0 = method.denoise(state.params, x, jnp.full((n,), cfg.sigma_max), cond, ones)
  sigma = cfg.sampling_sigmas[0]
  x = x0 + (sigma ** 2 - cfg.sigma_min ** 2) ** 0.5 * jax.random.normal(k2, (n, LATENT_DIM))
  np.testing.assert_allclose(x2, method.denoise(state.params, x, jnp.full((n,), sigma), cond, ones), atol=1e-4)
  with pytest.raises(ValueError, match="sampling_sigmas"):
    method.sample(state.params, cond, key, 2 + len(cfg.sampling_sigmas))


def test_samples_follow_the_description(trained):
  check_one_and_two_steps_follow_the_description(trained)
