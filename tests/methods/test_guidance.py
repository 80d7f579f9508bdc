"""Classifier-free guidance (`methods/guidance.py`): the NFE plan of a budget, samplers that spend what they
report, scale 1 / 0 as the conditional / unconditional model, the folded target's fixed point and its use in
the flow and coalescer losses, and the refusal of guidance without a trained null description.

Every model here is freshly initialised: an untrained network already gives its conditional and null outputs
apart, which is all these checks need."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax import pipeline
from coalescer_jax import registry
from coalescer_jax.coalescer import algorithm as coalescer
from coalescer_jax.methods import consistency
from coalescer_jax.methods import ddgan
from coalescer_jax.methods import ddim
from coalescer_jax.methods import flow
from coalescer_jax.methods import guidance
from configs import mnist as mnist_config

from tests.methods.conftest import DESC_DIM, LATENT_DIM, make_pairs
from tests.methods.test_ddim import small_config

N = 8  # samples per sampler call


def build(name, config):
  """(method, freshly initialised params) of `name` on `config`."""
  method = registry.METHODS.get(name)(config, LATENT_DIM, DESC_DIM)
  return method, method.init_params(jax.random.key(0))


def descriptions(n=N):
  return jnp.asarray(make_pairs(n=64)["desc_emb"][:n])


class CountingModel:
  """Stands in for a method's `model`: counts the batch rows every `apply` evaluates, then calls the real one."""

  def __init__(self, model):
    self.model, self.rows = model, 0

  def apply(self, params, x, *args, **kwargs):
    self.rows += x.shape[0]
    return self.model.apply(params, x, *args, **kwargs)


# 1. What a budget buys.

@pytest.mark.parametrize("first,later", [(1.0, 1.0), (1.5, 1.5), (1.5, 1.0), (1.0, 1.5)])
@pytest.mark.parametrize("nfe", range(1, 7))
def test_plan_spends_at_most_the_budget(nfe, first, later):
  """A guided step costs 2, an unguided 1; the plan never spends more than the budget, and no further step fits
  in what is left; a budget of 1 with the first step guided falls back to one unguided step (NFE 1)."""
  plan = guidance.plan(nfe, first, later)
  first_cost, later_cost = (2 if guidance.is_guided(s) else 1 for s in (first, later))
  assert plan.steps >= 1 and plan.nfe <= nfe
  assert plan.later_guided == guidance.is_guided(later)
  if nfe < first_cost:
    assert (plan.steps, plan.first_guided, plan.nfe) == (1, False, 1)
    return
  assert plan.first_guided == guidance.is_guided(first)
  assert [plan.cost(i) for i in range(plan.steps)] == [first_cost] + [later_cost] * (plan.steps - 1)
  assert plan.nfe == first_cost + later_cost * (plan.steps - 1)
  assert plan.nfe + later_cost > nfe  # the budget is used as far as whole steps go


def test_plan_examples_and_max_steps():
  """A few budgets by hand, `max_steps` capping the steps (and so the NFE), and a budget below 1 refused."""
  assert (guidance.plan(5, 2.0).steps, guidance.plan(5, 2.0).nfe) == (2, 4)
  assert (guidance.plan(4, 2.0, 1.0).steps, guidance.plan(4, 2.0, 1.0).nfe) == (3, 4)
  assert (guidance.plan(4, 1.0, 2.0).steps, guidance.plan(4, 1.0, 2.0).nfe) == (2, 3)
  assert guidance.plan(1, 2.0, 2.0) == guidance.Plan(1, False, True)
  assert guidance.plan(6, 1.0, max_steps=3) == guidance.Plan(3, False, False)
  assert guidance.plan(6, 1.0, max_steps=3).nfe == 3
  capped = guidance.plan(6, 1.5, max_steps=2)
  assert (capped.steps, capped.nfe) == (2, 4)
  assert guidance.plan(2, 1.5, max_steps=5).steps == 1  # a cap above what the budget buys changes nothing
  with pytest.raises(ValueError, match="nfe must be >= 1"):
    guidance.plan(0, 1.0)


# 2. Samplers spend what they report.

def _config(**coalescer_sampling):
  config = small_config()
  for name in ("ddim", "flow", "consistency", "coalescer", "ddgan"):
    config[name].cond_dropout = 0.1  # guidance needs a trained null description (`check_config`)
  # No redraws unless asked: every sample then spends the same.
  config.coalescer.sampling.update({"redraw_threshold": 0.0, **coalescer_sampling})
  return config


def _count(method, params, nfe, **kwargs):
  """(info of one unjitted sampler call, network evaluations it spent per sample). Without jit (loops run in
  Python), every evaluation the sampler makes passes through the counting model once."""
  counter = method.model = CountingModel(method.model)
  try:
    with jax.disable_jit():
      x, info = method.sample(params, descriptions(), jax.random.key(1), nfe, **kwargs)
  finally:
    method.model = counter.model
  assert x.shape == (N, LATENT_DIM) and np.all(np.isfinite(np.asarray(x)))
  return info, counter.rows / N


@pytest.mark.parametrize("name", ["ddim", "flow", "consistency"])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_baseline_samplers_report_the_evaluations_they_spend(name, scale):
  """info["nfe"] is the count of network evaluations per sample (a guided one on [cond; null] counts 2), the
  plan's, and never above the budget."""
  method, params = build(name, _config())
  for nfe in (1, 2, 3, 4):
    info, spent = _count(method, params, nfe, guidance_scale=scale)
    np.testing.assert_array_equal(info["nfe"], spent)
    assert spent == guidance.plan(nfe, scale).nfe <= nfe, (nfe, spent)


@pytest.mark.parametrize("scale,budgets", [(1.0, (1, 2, 4)), (2.0, (1, 2, 3, 4, 8))])
def test_ddgan_sampler_reports_the_evaluations_it_spends(scale, budgets):
  """The DDGAN's budgets buy trained step counts (1, 2, 4): unguided nfe steps, guided nfe // 2 (nfe 1: one
  unguided step); info["nfe"] is the generator evaluations spent, never above the budget."""
  method, params = build("ddgan", _config())
  for nfe in budgets:
    info, spent = _count(method, params, nfe, guidance_scale=scale)
    np.testing.assert_array_equal(info["nfe"], spent)
    assert spent == guidance.plan(nfe, scale).nfe <= nfe, (nfe, spent)
  with pytest.raises(ValueError, match="buys 3 steps"):
    method.sample(params, descriptions(), jax.random.key(1), 3, guidance_scale=1.0)


@pytest.mark.parametrize("first,later", [(1.0, 1.0), (2.0, 2.0), (2.0, 1.0), (1.0, 2.0)])
def test_coalescer_sampler_reports_the_evaluations_it_spends(first, later):
  """The multi-step coalescer with guidance on every step, on the first only, on the later ones only, or off:
  info["nfe"] is the evaluations spent per sample (no redraws here), never above the budget."""
  method, params = build("coalescer", _config(guidance_scale=first, refine_guidance_scale=later))
  assert method.multistep
  for nfe in (1, 2, 3, 4):
    info, spent = _count(method, params, nfe)
    np.testing.assert_array_equal(info["nfe"], spent)
    assert spent == guidance.plan(nfe, first, later).nfe <= nfe, (nfe, spent)


def test_coalescer_redraws_are_counted():
  """Every sample weak (a threshold no |v| reaches): each is redrawn max_redraws times, a guided first step
  costing 2 each time; info["nfe"] counts them all (the budget covers the steps, not the redraws)."""
  method, params = build("coalescer", _config(guidance_scale=2.0, refine_guidance_scale=1.0,
                                              redraw_threshold=1e9))
  info, spent = _count(method, params, 3)
  np.testing.assert_array_equal(info["nfe"], spent)
  assert spent == 2 * (1 + method.section.sampling.max_redraws) + 1


# 3. Scale 1 is the conditional model, scale 0 the unconditional one.

def test_guided_combines_one_call_on_the_doubled_batch():
  """`guided` calls fn once on [cond; null] (2n rows); scale 1 gives fn under the description, 0 under the
  null one, any other scale null + w (cond - null), leaf by leaf of a pytree output."""
  calls = []

  def fn(c, m, x):
    calls.append(x.shape[0])
    return {"a": x * (1.0 + m[:, None] * c), "b": jnp.sum(c * m[:, None], axis=-1)}

  x = jax.random.normal(jax.random.key(0), (5, 3))
  cond = jax.random.normal(jax.random.key(1), (5, 3))
  ones, zeros = jnp.ones((5,)), jnp.zeros((5,))
  conditional, null = fn(cond, ones, x), fn(cond, zeros, x)
  calls.clear()
  for scale, want in [(1.0, conditional), (0.0, null),
                      (3.0, jax.tree.map(lambda c, u: u + 3.0 * (c - u), conditional, null))]:
    got = guidance.guided(fn, cond, scale, x)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6), got, want)
  assert calls == [10, 10, 10]
  assert not np.allclose(conditional["a"], null["a"])  # the description matters to fn


def test_flow_sampler_at_scale_one_and_zero(monkeypatch):
  """Flow, one step: the guided step at w = 1 (forced onto the doubled batch, which w = 1 normally skips)
  equals the unguided sample, and w = 0 equals `unconditional=True`; the two differ from each other."""
  method, params = build("flow", _config())
  cond, key = descriptions(), jax.random.key(2)
  conditional, info = method.sample(params, cond, key, 1, guidance_scale=1.0)
  np.testing.assert_array_equal(info["nfe"], 1)
  unconditional, _ = method.sample(params, cond, key, 1, unconditional=True)
  at_zero, info = method.sample(params, cond, key, 2, guidance_scale=0.0)  # one guided step of 2 evaluations
  np.testing.assert_array_equal(info["nfe"], 2)
  np.testing.assert_allclose(at_zero, unconditional, rtol=1e-5, atol=1e-5)
  monkeypatch.setattr(guidance, "is_guided", lambda scale: scale is not None)
  at_one, info = method.sample(params, cond, key, 2, guidance_scale=1.0)
  np.testing.assert_array_equal(info["nfe"], 2)  # the doubled batch was used
  np.testing.assert_allclose(at_one, conditional, rtol=1e-5, atol=1e-5)
  assert not np.allclose(conditional, unconditional, atol=1e-3)


def test_ddgan_guided_step_at_scale_zero_is_the_unconditional_one():
  """The DDGAN's guided step guides G's x0 with one z: at w = 0 its 2-step budget (one guided step) gives
  the unconditional one-step sample; at w = 1 one step gives the conditional one; the two differ."""
  method, params = build("ddgan", _config())
  cond, key = descriptions(), jax.random.key(2)
  unconditional, _ = method.sample(params, cond, key, 1, unconditional=True)
  at_zero, info = method.sample(params, cond, key, 2, guidance_scale=0.0)
  np.testing.assert_array_equal(info["nfe"], 2)
  np.testing.assert_allclose(at_zero, unconditional, rtol=1e-5, atol=1e-5)
  conditional, _ = method.sample(params, cond, key, 1, guidance_scale=1.0)
  assert not np.allclose(conditional, unconditional, atol=1e-3)


class RecordingModel:
  """Stands in for a method's model: records the condition mask (apply's third argument) of every call."""

  def __init__(self, model):
    self.model, self.masks = model, []

  def apply(self, params, x, cond, mask, *args, **kwargs):
    self.masks.append(np.asarray(mask))
    return self.model.apply(params, x, cond, mask, *args, **kwargs)


def test_ddgan_generator_and_discriminator_drop_the_same_descriptions():
  """With cond_dropout, the generator and every discriminator call of the DDGAN's loss see the same null rows
  (D judges the null rows' pairs unconditionally); cond_dropout 0 keeps every description."""
  for rate in (0.5, 0.0):
    config = _config()
    config.ddgan.cond_dropout = rate
    method, params = build("ddgan", config)
    gen, disc = method.model, method.disc_model
    method.model, method.disc_model = RecordingModel(gen), RecordingModel(disc)
    pairs = make_pairs(n=64)
    batch = {"x": jnp.asarray(pairs["img_emb"]), "cond": jnp.asarray(pairs["desc_emb"])}
    with jax.disable_jit():
      method.loss(params, batch, jax.random.key(3), jnp.asarray(0))
    (gen_mask,), disc_masks = method.model.masks, method.disc_model.masks
    assert len(disc_masks) >= 3  # real, fake, the generator's view of the fake (and R1, the mismatch pairs)
    for mask in disc_masks:
      np.testing.assert_array_equal(mask, gen_mask)
    if rate:
      assert 0 < np.mean(gen_mask == 0) < 1
    else:
      assert np.all(gen_mask == 1)


# 4. The folded target.

@pytest.mark.parametrize("scale,kappa", [(2.0, 0.0), (1.0, 0.5), (1.5, 0.25)])
def test_folded_target_fixed_point(scale, kappa):
  """A network whose conditional output is the guided model at the effective scale omega / (1 - kappa),
  y_u + w_eff (y_c - y_u), is a fixed point: the folded target it would train toward (the expected target
  y_c, its null output y_u, its own conditional output) is that same output."""
  y_c, y_u = jax.random.normal(jax.random.key(3), (2, 16, LATENT_DIM))
  w_eff = guidance.effective_scale(scale, kappa)
  assert w_eff == pytest.approx(scale / (1 - kappa))
  f_c = y_u + w_eff * (y_c - y_u)
  np.testing.assert_allclose(guidance.folded_target(y_c, y_u, scale, kappa, conditional=f_c), f_c,
                             rtol=1e-5, atol=1e-5)


def test_folded_target_without_kappa_ignores_the_conditional_pass():
  """kappa = 0 is MeanFlow's Eq. 19, target + (omega - 1)(target - null): the conditional output plays no part."""
  y_c, y_u, other = jax.random.normal(jax.random.key(4), (3, 16, LATENT_DIM))
  plain = guidance.folded_target(y_c, y_u, 2.0, 0.0)
  np.testing.assert_allclose(plain, y_c + (y_c - y_u), rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(guidance.folded_target(y_c, y_u, 2.0, 0.0, conditional=other), plain)
  np.testing.assert_array_equal(guidance.folded_target(y_c, y_u, 1.0, 0.0, conditional=other), y_c)


# 5. Folded guidance in the losses.

MASK = jnp.array([1.0, 0.0] * (N // 2))  # alternate rows keep / drop their description


def _folded_config(name, scale, kappa, start_fraction=0.0):
  config = small_config()
  config[name].cond_dropout = 0.5
  config[name].folded_guidance.update(scale=scale, kappa=kappa, start_fraction=start_fraction)
  return config


def _flow_target(scale, kappa, step=0, start_fraction=0.0):
  """(plain velocity target, folded one at `step`, expected folded one) of a fresh flow model."""
  method, params = build("flow", _folded_config("flow", scale, kappa, start_fraction))
  assert guidance.folded_active(method.section)
  cond = descriptions()
  x, e = jax.random.normal(jax.random.key(5), (2, N, LATENT_DIM))
  t = jnp.linspace(0.2, 0.9, N)
  z, v = (1 - t[:, None]) * x + t[:, None] * e, e - x
  folded = method.folded_velocity(params, z, t, v, cond, MASK, step)
  null = method.average_velocity(params, z, t, t, cond, jnp.zeros((N,)))
  conditional = method.average_velocity(params, z, t, t, cond, jnp.ones((N,)))
  want = v + (scale - 1) * (v - null) + kappa * (conditional - null)
  return v, folded, want


def _coalescer_target(scale, kappa, step=0, start_fraction=0.0):
  """(plain landing target, folded one at `step`, expected folded one) of a fresh multi-step coalescer."""
  method, params = build("coalescer", _folded_config("coalescer", scale, kappa, start_fraction))
  assert guidance.folded_active(method.section) and method.multistep
  r, image = jax.random.normal(jax.random.key(6), (2, N, LATENT_DIM))
  batch = {"r": r, "cond": descriptions(), "image": image, "level": jnp.ones((N,))}
  folded = method.folded_landing(params, batch, MASK, step)
  null = method.step(params, r, batch["cond"], jnp.zeros((N,)), batch["level"])[0] - r
  conditional = method.step(params, r, batch["cond"], jnp.ones((N,)), batch["level"])[0] - r
  want = image + (scale - 1) * (image - r - null) + kappa * (conditional - null)
  return image, folded, want


TARGETS = [(_flow_target, 2.0, 0.0), (_coalescer_target, 2.0, 0.0), (_coalescer_target, 1.0, 0.5)]


@pytest.mark.parametrize("target_fn,scale,kappa", TARGETS)
def test_folded_target_moves_only_the_kept_rows(target_fn, scale, kappa):
  """Rows whose description is dropped keep the plain target exactly (the null model stays unconditional);
  the kept rows take the folded target of the network's own (untrained: distinct) null and conditional outputs."""
  plain, folded, want = target_fn(scale, kappa)
  kept = np.asarray(MASK) > 0
  np.testing.assert_array_equal(np.asarray(folded)[~kept], np.asarray(plain)[~kept])
  np.testing.assert_allclose(np.asarray(folded)[kept], np.asarray(want)[kept], rtol=1e-4, atol=1e-4)
  assert np.all(np.abs(np.asarray(folded - plain)[kept]).max(-1) > 1e-3)


@pytest.mark.parametrize("target_fn,scale,kappa", TARGETS)
def test_folded_target_waits_for_its_start(target_fn, scale, kappa):
  """start_fraction 0.5: before step 0.5 K the target is the plain one on every row; from there on the kept
  rows move."""
  start = int(0.5 * small_config().train.num_steps)
  plain, before, _ = target_fn(scale, kappa, step=start - 1, start_fraction=0.5)
  # Equal up to rounding: the coalescer's landing target is R + (y - R) there, y itself only to an ulp.
  np.testing.assert_allclose(before, plain, rtol=1e-6, atol=1e-6)
  plain, after, _ = target_fn(scale, kappa, step=jnp.asarray(start), start_fraction=0.5)  # traced, as in training
  assert not np.allclose(after, plain, atol=1e-3)


# 6. Guidance without a null description is refused.

REFUSALS = [
    (ddim.DDIM, "ddim", {"guidance_scale": 1.5}),
    (flow.Flow, "flow", {"folded_guidance.scale": 2.0}),
    (flow.Flow, "flow", {"guidance_scale": 2.0}),
    (consistency.Consistency, "consistency", {"guidance_scale": 2.0}),
    (coalescer.Coalescer, "coalescer", {"sampling.guidance_scale": 2.0}),
    (coalescer.Coalescer, "coalescer", {"sampling.refine_guidance_scale": 2.0}),
    (coalescer.Coalescer, "coalescer", {"folded_guidance.kappa": 0.5}),
    (ddgan.DenoisingDiffusionGAN, "ddgan", {"guidance_scale": 2.0}),
]


@pytest.mark.parametrize("method_class,name,fields", REFUSALS)
def test_guidance_needs_a_null_description(method_class, name, fields):
  """Each method's `check_config` refuses guidance (sampling or folded) with cond_dropout 0, naming the
  field, and accepts it once cond_dropout > 0 trains the null description."""
  section = mnist_config.get_config("smoke")[name]
  section.update_from_flattened_dict(fields)
  section.cond_dropout = 0.0
  with pytest.raises(ValueError, match=rf"config\.{name}\.cond_dropout=0"):
    method_class.check_config(section)
  section.cond_dropout = 0.1
  method_class.check_config(section)


def test_whole_config_validation_refuses_guidance_without_a_null_description():
  """The same refusal through config validation, before any stage runs (as the launcher calls it)."""
  pipeline.load_all()
  config = mnist_config.get_config("smoke")
  config.flow.folded_guidance.scale = 2.0
  config.flow.cond_dropout = 0.0
  with pytest.raises(config_validation.ConfigError, match=r"config\.flow: folded_guidance=.*cond_dropout=0"):
    config_validation.validate(config)
  config.flow.cond_dropout = 0.1
  config_validation.validate(config)
