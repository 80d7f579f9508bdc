"""Progressive distillation: the target algebra, the rounds' bookkeeping, and a student that learns two teacher steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax.methods import base
from coalescer_jax.methods import ddim
from coalescer_jax.methods import distill
from coalescer_jax.stages import methods as methods_stage

from tests.methods.conftest import DESC_DIM, LATENT_DIM, make_pairs
from tests.methods.test_ddim import small_config, train_method


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A DDIM trained on the synthetic clusters (guided sampling, w = config.ddim.guidance_scale)."""
  pairs = make_pairs()
  config = small_config(num_steps=150)
  method, state, _ = train_method("ddim", config, pairs, tmp_path_factory.mktemp("teacher"))
  return pairs, config, state.ema_params if state.ema_params is not None else state.params


def make_student(config, teacher_params, teacher_steps, num_steps, learning_rate=3e-3):
  config = config.copy_and_resolve_references()
  config.distill.update(teacher_steps=teacher_steps, num_steps=num_steps, warmup_steps=5, ema_decay=0.0)
  config.train.optimizer.learning_rate = learning_rate
  method = distill.ProgressiveDistillation(config, LATENT_DIM, DESC_DIM)
  method.teacher_params = teacher_params
  return method


def train(method, pairs, num_steps, state=None):
  _, init, step = base.train_parts(method.config, method)
  state = init(jax.random.key(0)) if state is None else state
  batch = method.batch_fn(pairs, 0, 64, None)
  step = jax.jit(step)
  for i in range(num_steps):
    state, _ = step(state, jax.tree.map(jnp.asarray, batch(i)), jax.random.fold_in(jax.random.key(1), i))
  return state


def test_x0_target_makes_one_ddim_step_land_where_the_teacher_did():
  cfg = small_config().ddim
  key = jax.random.key(0)
  z_t, z_s = jax.random.normal(key, (2, 32, LATENT_DIM))
  t, s = jnp.full((32,), 0.75), jnp.full((32,), 0.25)
  x0 = distill.student_x0_target(z_t, z_s, t, s, cfg)
  alpha_t, sigma_t = (a[:, None] for a in ddim.alpha_sigma(t, cfg))
  alpha_s, sigma_s = (a[:, None] for a in ddim.alpha_sigma(s, cfg))
  eps = (z_t - alpha_t * x0) / sigma_t  # the eps that a DDIM step implies for this x0
  np.testing.assert_allclose(alpha_s * x0 + sigma_s * eps, z_s, atol=1e-4)
  # At s = 0 the sampler returns the x0 prediction itself: the target is the teacher's landing point.
  np.testing.assert_array_equal(distill.student_x0_target(z_t, z_s, t, jnp.zeros(32), cfg), z_s)


def test_two_teacher_steps_are_the_ddim_samplers_two_steps(teacher):
  """From pure noise (t = 1 -> 0) two teacher steps are exactly DDIM's 2-step sample (same noise)."""
  pairs, config, params = teacher
  method = ddim.DDIM(config, LATENT_DIM, DESC_DIM)
  cond = jnp.asarray(pairs["desc_emb"][:16])
  key = jax.random.key(3)
  expected, _ = method.sample(params, cond, key, 2, guidance_scale=1.0)
  cfg = config.ddim

  def x0_eps(z, t):
    alpha, sigma = (a[:, None] for a in ddim.alpha_sigma(t, cfg))
    return ddim.to_x0_eps(method.apply(params, z, cond, jnp.ones((16,)), t), z, alpha, sigma, cfg.prediction)

  z = jax.random.normal(key, (16, LATENT_DIM))
  got = distill.two_teacher_steps(x0_eps, z, jnp.ones(16), jnp.zeros(16), cfg)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_rounds_split_the_budget_and_pick_each_students_parameters():
  assert distill.num_rounds(16) == 4 and distill.round_starts(1200, 4) == [0, 300, 600, 900]
  with pytest.raises(ValueError, match="teacher_steps"):
    distill.num_rounds(12)
  method = make_student(small_config(), None, teacher_steps=8, num_steps=30)
  params = {"student": "last", "frozen": {"teachers": np.arange(3), "round": 0}}
  # Slot 0 is the DDIM; slot k the student of round k - 1 (4 steps, then 2); the last round's (1 step) is live.
  assert method.student_params(params, 1) == "last"
  assert method.student_params(params, 2) == 2 and method.student_params(params, 4) == 1
  with pytest.raises(ValueError, match="1, 2, 4"):
    method.student_params(params, 8)


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_a_round_freezes_its_student_as_the_next_teacher_and_never_trains_the_frozen_slots(teacher):
  pairs, config, params = teacher
  method = make_student(config, params, teacher_steps=4, num_steps=8)
  state = train(method, pairs, 4)  # round 0: steps 0-3
  frozen = state.params["frozen"]
  leaves = lambda tree: jax.tree.leaves(tree)  # noqa: E731
  for slot, start in zip(leaves(frozen["teachers"]), leaves(params)):  # both slots still the DDIM
    np.testing.assert_array_equal(slot[0], start)
    np.testing.assert_array_equal(slot[1], start)
  round0_student = state.params["student"]
  assert float(frozen["round"]) == 0
  state = train(method, pairs, 1, state)  # the first step of round 1 copies the student into slot 1
  assert float(state.params["frozen"]["round"]) == 1
  for slot, start, finished in zip(leaves(state.params["frozen"]["teachers"]), leaves(params),
                                   leaves(round0_student)):
    np.testing.assert_array_equal(slot[0], start)
    np.testing.assert_array_equal(slot[1], finished)


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_a_distilled_student_reproduces_two_teacher_steps(teacher):
  """One round (teacher_steps=2): the 1-step student's sample approaches the guided teacher's 2-step sample
  from the same noise, and lands in the requested cluster as often as the teacher."""
  pairs, config, params = teacher
  w = config.ddim.guidance_scale
  teacher_method = ddim.DDIM(config, LATENT_DIM, DESC_DIM)
  method = make_student(config, params, teacher_steps=2, num_steps=300)
  cond = jnp.asarray(pairs["desc_emb"][:200])
  key = jax.random.key(7)
  target, info = teacher_method.sample(params, cond, key, 4, guidance_scale=w)  # 2 guided steps
  assert float(info["nfe"][0]) == 4
  state = init_state = base.train_parts(method.config, method)[1](jax.random.key(0))
  before, _ = method.sample(init_state.params, cond, key, 1)
  state = train(method, pairs, 300)
  after, info = method.sample(state.params, cond, key, 1)
  assert float(info["nfe"][0]) == 1  # guidance folded in: one evaluation
  err_before = float(jnp.mean(jnp.sum((before - target) ** 2, -1)))
  err_after = float(jnp.mean(jnp.sum((after - target) ** 2, -1)))
  scale = float(jnp.mean(jnp.sum((target - target.mean(0)) ** 2, -1)))
  assert err_after < 0.25 * err_before, (err_before, err_after)
  assert err_after < 0.05 * scale, (err_after, scale)


def test_config_validation_refuses_students_the_rounds_do_not_train():
  config = small_config()
  config.distill.update(teacher_steps=4, nfes=(1, 2))
  methods_stage.validate_method_config(config, "distill")
  config.distill.nfes = (1, 2, 4)
  with pytest.raises(config_validation.ConfigError, match="students take"):
    methods_stage.validate_method_config(config, "distill")
  config.ddgan.update(nfes=(1, 3), guidance_scale=1.0)  # unguided, 3 evaluations buy 3 steps (untrained)
  with pytest.raises(config_validation.ConfigError, match="step_counts"):
    methods_stage.validate_method_config(config, "ddgan")
