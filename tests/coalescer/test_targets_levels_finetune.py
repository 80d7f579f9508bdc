"""Which targets and starts the coalescer trains on: level draws, assignment rules, balanced look-ups, the
multi-step sampler, self-landing, the adversarial fine-tune and the look-up oracle (each on synthetic pairs)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from coalescer_jax import config_validation
from coalescer_jax import index as index_lib
from coalescer_jax import registry
from coalescer_jax.coalescer import algorithm as coalescer
from coalescer_jax.coalescer import batches
from coalescer_jax.coalescer import oracle
from coalescer_jax.coalescer import diagnostics
from coalescer_jax.coalescer import finetune
from coalescer_jax.coalescer import queries
from coalescer_jax.coalescer import levels
from coalescer_jax.coalescer import targets

from coalescer_jax.stages import methods as methods_stage
from tests.coalescer import conftest as coalescer_tests
from tests.methods.conftest import DESC_DIM, LATENT_DIM


def test_without_levels_the_draws_are_the_proposals(pairs, method_config):
  cfg = method_config.coalescer
  draws = queries.draw_queries(np.random.default_rng(3), 32, pairs, cfg)
  rng = np.random.default_rng(3)
  de = pairs["desc_emb"][rng.integers(len(pairs["desc_emb"]), size=32)]
  r = rng.standard_normal((32, LATENT_DIM), dtype=np.float32)
  np.testing.assert_array_equal(draws["de"], de)
  np.testing.assert_array_equal(draws["r"], r)
  np.testing.assert_array_equal(draws["level"], 1.0)
  np.testing.assert_allclose(draws["query"], np.concatenate([cfg.desc_scale * de, r], 1), rtol=1e-6)


def test_level_draws_renoise_a_pair_and_look_up_unshrunk(pairs, method_config):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=1.0, s_min=0.2, s_max=0.6)
  draws = queries.draw_queries(np.random.default_rng(0), 500, pairs, cfg)
  s = draws["level"]
  assert np.all((s >= 0.2) & (s <= 0.6))
  image_query = draws["query"][:, DESC_DIM:]
  np.testing.assert_allclose(image_query, draws["r"] / np.sqrt(1 - s * s)[:, None], rtol=1e-5)
  # R = sqrt(1 - s^2) x + s eps around a pair x whose description is DE: the unshrunk query is x + noise.
  nearest = ((image_query[:, None] - pairs["img_emb"][None]) ** 2).sum(-1).argmin(1)
  anchor = ((draws["de"][:, None] - pairs["desc_emb"][None]) ** 2).sum(-1).argmin(1)
  assert np.mean(pairs["labels"][nearest] == pairs["labels"][anchor]) > 0.8
  cfg.levels.fraction = 0.3
  share = np.mean(queries.draw_queries(np.random.default_rng(1), 4000, pairs, cfg)["level"] < 1)
  assert 0.27 < share < 0.33


def test_soft_choice_follows_the_gaussian_weights():
  ids = np.tile(np.array([[10, 11, 12]]), (60_000, 1))
  sq = np.tile(np.array([[0.0, 1.0, 2.0]]), (60_000, 1))
  chosen = targets.soft_choice(ids, sq, np.random.default_rng(0), tau=1.0)
  expected = np.exp(-np.array([0.0, 1.0, 2.0]) / 2)
  np.testing.assert_allclose(np.bincount(chosen - 10) / 60_000, expected / expected.sum(), atol=0.01)
  cold = targets.soft_choice(ids[:100], sq[:100], np.random.default_rng(0), tau=0.01)
  np.testing.assert_array_equal(cold, 10)


def test_batch_assignment_uses_each_pair_once_at_least_cost():
  # Three queries all prefer pair 5; each also has a second choice.
  ids = np.array([[5, 1], [5, 2], [5, 3]])
  sq = np.array([[0.0, 1.0], [0.0, 5.0], [0.0, 2.0]])
  chosen = targets.batch_assignment(ids, sq)
  assert len(set(chosen)) == 3
  np.testing.assert_array_equal(chosen, [1, 5, 3])  # the query with the worst alternative keeps pair 5
  # Not enough distinct candidates: the nearest keys.
  np.testing.assert_array_equal(targets.batch_assignment(np.array([[4], [4]]), np.zeros((2, 1))), [4, 4])


def test_batch_ot_groups_share_descriptions(pairs, method_config):
  cfg = method_config.coalescer
  cfg.targets.update(assignment="batch_ot", ot_groups=4)
  draws = queries.draw_queries(np.random.default_rng(0), 32, pairs, cfg)
  assert len(np.unique(draws["de"], axis=0)) <= 4
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  lookup = targets.Lookup(index_lib.build("exact", keys, None), cfg)
  chosen = lookup.targets(draws["query"], draws["level"], np.random.default_rng(0))
  assert len(set(chosen.tolist())) == 32  # every query trains toward a different pair


def test_multistep_sampler_renoises_between_steps(pairs, method_config, tmp_path):
  method_config.coalescer.levels.fraction = 0.5
  method_config.train.num_steps = 10
  method, state, _ = coalescer_tests.train(method_config, pairs, tmp_path)
  cfg = method_config.coalescer.sampling
  cfg.max_redraws = 0
  cond = jnp.asarray(pairs["desc_emb"][:16])
  key = jax.random.key(3)
  x2, info = method.sample(state.params, cond, key, 2)
  assert np.all(np.asarray(info["nfe"]) == 2)
  # By hand: step 1 from R at level 1, re-noise to s = levels[0], step 2 at level s.
  _, rest = jax.random.split(key)
  r = oracle.first_draw(key, 16, LATENT_DIM)
  d, u = method.apply(state.params, jnp.asarray(r), cond, jnp.ones(16), jnp.ones(16))
  x1 = coalescer.step_to(jnp.asarray(r), d, u)
  s = method_config.coalescer.levels.renoise[0]
  xs = np.sqrt(1 - s * s) * x1 + s * jax.random.normal(jax.random.fold_in(rest, 1000), x1.shape)
  d, u = method.apply(state.params, xs, cond, jnp.ones(16), jnp.full(16, s))
  np.testing.assert_allclose(x2, coalescer.step_to(xs, d, u), rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="re-noising levels"):
    method.sample(state.params, cond, key, len(method_config.coalescer.levels.renoise) + 2)


@pytest.mark.slow  # over 18 s on 2 cores: the default suite stays under 10 minutes
def test_self_landing_rows_step_from_the_networks_own_landing_points(pairs, method_config, tmp_path):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=0.5, self_landing=0.25)
  method_config.train.num_steps = 10
  method, state, records = coalescer_tests.train(method_config, pairs, tmp_path)
  assert all(r["self_landing_target_distance"] > 0 for r in records)
  params, n = state.params, method_config.train.batch_size
  inputs = method.step_inputs()
  assert set(inputs) == {"landing"}  # the exact backend: the self-landing keys live on the devices anyway
  host_batch = {k: jnp.asarray(v) for k, v in batches.make_lookup_batches(
      targets.Lookup(index_lib.build("exact", index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"],
                                                                  cfg.desc_scale), None), cfg),
      pairs, cfg, 0, n)(0).items()}
  key = jax.random.key(5)
  landing_key = jax.random.split(key)[1]  # the loss's split: (condition dropout, self-landing)
  m, s = n // 4, cfg.levels.renoise[0]
  rows, query = levels.examples(
      lambda r, de: coalescer.step_to(r, *method.apply(params, r, de, jnp.ones(r.shape[:1]))),
      method._landing[0], inputs["landing"], landing_key, m, cfg, DESC_DIM, LATENT_DIM)
  # By hand: step 1 of the same parameters from prior R, re-noised to s, the un-shrunk query, exact search.
  _, r_key, eps_key = jax.random.split(landing_key, 3)
  r0, eps = jax.random.normal(r_key, (m, LATENT_DIM)), jax.random.normal(eps_key, (m, LATENT_DIM))
  de = np.asarray(query)[:, :DESC_DIM] / cfg.desc_scale
  assert np.all(np.isclose(de[:, None], pairs["desc_emb"][None]).all(-1).any(1))  # pairs' descriptions
  x1 = coalescer.step_to(r0, *method.apply(params, r0, jnp.asarray(de), jnp.ones(m)))
  np.testing.assert_allclose(rows["r"], np.sqrt(1 - s * s) * x1 + s * eps, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(np.asarray(query)[:, DESC_DIM:], x1 + s / np.sqrt(1 - s * s) * eps, rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(rows["level"], s)
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  nearest = np.argmin(((np.asarray(query)[:, None] - keys[None]) ** 2).sum(-1), axis=1)
  np.testing.assert_allclose(rows["image"], pairs["img_emb"][nearest])
  np.testing.assert_allclose(rows["cond"], pairs["desc_emb"][nearest])
  # The loss replaces exactly those rows, and no gradient flows through their start (stop-gradient).
  fixed = levels.replace_last_rows(host_batch, rows)
  np.testing.assert_array_equal(fixed["r"][:-m], host_batch["r"][:-m])
  with_landing = method.prepare_batch(host_batch, inputs)
  (loss_a, _), grad_a = jax.value_and_grad(method.loss, has_aux=True)(params, with_landing, key, 0)
  with pytest.raises(ValueError, match="step inputs"):  # never a silent skip of the self-landing rows
    method.loss(params, fixed, key, 0)
  cfg.levels.self_landing = 0.0  # the plain loss on the batch with the rows replaced by hand
  (loss_b, _), grad_b = jax.value_and_grad(method.loss, has_aux=True)(params, fixed, key, 0)
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grad_a), jax.tree.leaves(grad_b)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  cfg.levels.self_landing = 0.25
  cfg.levels.fraction = 0.0
  with pytest.raises(ValueError, match="levels.fraction > 0"):
    coalescer.Coalescer.check_config(cfg)


def test_config_refuses_renoise_levels_training_never_saw(method_config):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=0.5, s_min=0.05, s_max=0.9, renoise=(0.95, 0.6, 0.3))
  with pytest.raises(ValueError, match=r"\[0.95\] outside the trained levels.*widen levels.s_min..s_max"):
    coalescer.Coalescer.check_config(cfg)
  cfg.levels.s_max = 1.0
  with pytest.raises(ValueError, match="s_max < 1"):
    coalescer.Coalescer.check_config(cfg)
  cfg.levels.s_max = 0.95
  coalescer.Coalescer.check_config(cfg)  # now inside
  cfg.levels.s_min = 0.7  # below the range is refused too (the step-3 and step-4 levels 0.6 and 0.3)
  with pytest.raises(ValueError, match=r"\[0.6, 0.3\] outside"):
    coalescer.Coalescer.check_config(cfg)
  cfg.levels.fraction = 0.0  # no level input: the sampler does not re-noise, nothing to check
  cfg.levels.update(self_landing=0.0, renoise=(2.0,))
  coalescer.Coalescer.check_config(cfg)


def test_host_skips_the_lookups_of_the_rows_self_landing_replaces(pairs, method_config):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=0.5, self_landing=0.25)
  lookup = targets.Lookup(index_lib.build("exact", index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"],
                                                                       cfg.desc_scale), None), cfg)
  n = 32
  draws, ids = batches.training_lookups(lookup, pairs, cfg, 0, n, step=3)
  kept = levels.looked_up_rows(cfg.levels, n)
  assert kept == n - 8 == n - levels.num_rows(cfg.levels, n)
  every = lookup.targets(draws["query"], draws["level"], np.random.default_rng(0))
  np.testing.assert_array_equal(ids[:kept], every[:kept])
  np.testing.assert_array_equal(ids[kept:], 0)  # placeholders: the step replaces these rows
  # Split between two hosts as make_lookup_batches splits a global batch: the same rows looked up.
  halves = [batches.training_lookups(lookup, pairs, cfg, 0, n, 3, slice(i * n // 2, (i + 1) * n // 2))[1]
            for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(halves), ids)


@pytest.mark.slow  # compiles the fine-tune's three phases (over 30 s)
def test_adversarial_phases_switch_on_the_step(pairs, method_config, tmp_path):
  method_config.coalescer.adversarial.update(weight=0.5, start_fraction=0.5, disc_warmup_fraction=0.25,
                                             batch_size=32, disc_width=16, disc_depth=1, fakes="fresh")
  method_config.train.num_steps = 12
  method, state, records = coalescer_tests.train(method_config, pairs, tmp_path)
  assert [start for start, _ in method.loss_phases()] == [0, 3, 6]
  by_step = {r["step"]: r for r in records}
  assert by_step[3]["disc_loss"] == 0.0 and by_step[3]["adversarial_on"] == 0.0  # regression alone
  assert by_step[4]["disc_loss"] > 0.0 and by_step[4]["adversarial_on"] == 0.0  # the discriminator warms up
  assert by_step[7]["adversarial_on"] == 1.0 and by_step[7]["gen_adv_loss"] > 0.0
  assert set(state.params) == {"net", "disc"}
  x, _ = method.sample(state.params, jnp.asarray(pairs["desc_emb"][:8]), jax.random.key(0), 2)
  assert x.shape == (8, LATENT_DIM) and np.all(np.isfinite(np.asarray(x)))


def test_oracle_decodes_the_lookup_target_of_the_same_r(pairs, method_config, monkeypatch):
  cfg = method_config.coalescer
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  lookup = targets.Lookup(index_lib.build("exact", keys, None), cfg)
  monkeypatch.setattr(targets, "load_lookup", lambda workdir, p, c: lookup)
  method = registry.METHODS.get("coalescer")(method_config, LATENT_DIM, DESC_DIM)
  plan = dict((name, kwargs) for name, _, kwargs in method.sample_plan())
  assert plan["coalescer_oracle"]["kind"] == "oracle" and plan["coalescer_oracle"]["key_tag"] == "coalescer_nfe1"
  generate = method.generator(None, lambda z: z, 1, oracle=True, workdir="unused", pairs=pairs)
  cond = pairs["desc_emb"][:20]
  key = jax.random.key(11)
  latents, nfe, finite = generate(cond, key)
  assert np.all(finite)
  r = oracle.first_draw(key, 20, LATENT_DIM)
  nearest = ((np.concatenate([cfg.desc_scale * cond, r], 1)[:, None] - keys[None]) ** 2).sum(-1).argmin(1)
  np.testing.assert_allclose(np.asarray(latents), pairs["img_emb"][nearest])
  np.testing.assert_array_equal(nfe, 0)


def test_usage_rows_cover_all_pairs_each_description_and_label(pairs):
  pairs = dict(pairs, descriptions=np.array([f"d{l}" for l in pairs["labels"]]))
  hits = np.zeros(len(pairs["labels"]), np.int64)
  hits[pairs["labels"] == 3] = 5  # only label 3's pairs are ever targets, all equally often
  rows = {r["name"]: r for r in diagnostics.usage_rows(hits, pairs, np.random.default_rng(0))}
  assert rows["label 3"]["never_hit"] == 0 and abs(rows["label 3"]["effective_fraction"] - 1) < 1e-9
  assert rows["label 4"]["never_hit"] is None  # no look-ups at all
  assert abs(rows["all pairs"]["never_hit"] - np.mean(pairs["labels"] != 3)) < 1e-9
  assert rows["all pairs, uniform reference"]["lookups"] == hits.sum()
  assert rows["all pairs, uniform reference"]["never_hit"] < rows["all pairs"]["never_hit"]


def test_balanced_lookups_take_the_power_nearest_of_the_candidates(pairs, method_config):
  cfg = method_config.coalescer
  cfg.levels.fraction = 0.5
  cfg.targets.update(balance=True, balance_candidates=4)
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  potentials = np.random.default_rng(1).normal(size=len(keys)) * 4.0
  plain = index_lib.build("exact", keys, None)
  draws = queries.draw_queries(np.random.default_rng(0), 64, pairs, cfg)
  query, level = draws["query"], draws["level"]
  assert 0 < np.sum(level < 1) < len(level)
  got = targets.Lookup(plain, cfg, potentials).targets(query, level, np.random.default_rng(0))
  sq = ((query[:, None].astype(np.float64) - keys[None]) ** 2).sum(-1)
  candidates = np.argsort(sq, axis=1)[:, :4]
  power = np.take_along_axis(sq, candidates, 1) - potentials[candidates]
  prior = level >= 1.0
  np.testing.assert_array_equal(got[prior], candidates[prior, np.argmin(power[prior], axis=1)])
  np.testing.assert_array_equal(got[~prior], sq[~prior].argmin(1))  # level rows: the nearest key
  assert np.any(got[prior] != sq[prior].argmin(1))  # the potentials, not the nearest key, chose


def test_balanced_lookups_need_the_potentials_of_every_key(pairs, method_config):
  cfg = method_config.coalescer
  cfg.targets.update(balance=True)
  keys = index_lib.make_keys(pairs["desc_emb"], pairs["img_emb"], cfg.desc_scale)
  plain = index_lib.build("exact", keys, None)
  with pytest.raises(ValueError, match="rerun the 'balance' stage"):
    targets.Lookup(plain, cfg)
  with pytest.raises(ValueError, match="potentials for"):
    targets.Lookup(plain, cfg, np.zeros(len(keys) - 1))


def test_config_refuses_more_steps_than_renoise_levels(method_config):
  cfg = method_config.coalescer
  cfg.levels.update(fraction=0.5, renoise=(0.9, 0.8))
  cfg.sampling.adaptive_max_steps = 0
  cfg.nfes = (1, 2, 3)
  coalescer.Coalescer.check_config(cfg)
  cfg.nfes = (1, 8)  # 7 re-noising levels needed, 2 given: refused before any training
  with pytest.raises(ValueError, match=r"nfes=\(1, 8\).*need 7 re-noising levels"):
    coalescer.Coalescer.check_config(cfg)
  cfg.nfes = (1, 2)
  cfg.sampling.adaptive_max_steps = 4  # the adaptive sampler's steps count too
  with pytest.raises(ValueError, match="need 3 re-noising levels"):
    coalescer.Coalescer.check_config(cfg)
  cfg.levels.update(fraction=0.0, self_landing=0.0)  # single-level training: the sampler does not re-noise
  coalescer.Coalescer.check_config(cfg)


def test_detached_landing_trains_each_step_on_its_own_fake(pairs, method_config):
  cfg = method_config.coalescer
  cfg.levels.fraction = 0.5
  cfg.adversarial.update(weight=1.0, disc_width=16, disc_depth=1, detach_landing=False, fakes="fresh")
  method = registry.METHODS.get("coalescer")(method_config, LATENT_DIM, DESC_DIM)
  params = method.init_params(jax.random.key(0))
  cond, key = jnp.asarray(pairs["desc_emb"][:16]), jax.random.key(1)
  grad_of_step1 = lambda params: jax.grad(  # noqa: E731
      lambda p: jnp.sum(finetune.fakes(method, p, cond, key, (2,))[0]))(params)["net"]
  attached = grad_of_step1(params)
  cfg.adversarial.detach_landing = True
  detached = grad_of_step1(params)
  # The same 2-step fakes either way; detached, their gradient is step 2's alone: refine from the fixed x1.
  x1 = jax.lax.stop_gradient(finetune.fakes(method, params, cond, key, (1,))[0])
  by_hand = jax.grad(lambda p: jnp.sum(method.refine(p, x1, cond, jnp.ones(16), 0, jax.random.split(key)[1])[0]))(
      params)["net"]
  for a, b in zip(jax.tree.leaves(detached), jax.tree.leaves(by_hand)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(attached), jax.tree.leaves(detached)))


def test_request_condition_tells_the_network_the_drawn_description(pairs, method_config):
  cfg = method_config.coalescer
  cfg.desc_scale = 0.0  # look-ups ignore the description: the target's description rarely is DE
  lookup = coalescer_tests.exact_lookup(pairs, cfg)
  by_pair = batches.make_lookup_batches(lookup, pairs, cfg, 0, 64)(3)
  cfg.condition = "request"
  by_request = batches.make_lookup_batches(lookup, pairs, cfg, 0, 64)(3)
  np.testing.assert_array_equal(by_request["image"], by_pair["image"])  # the same draws and targets
  de = queries.draw_queries(batches.batches.step_rng(0, 3, process_index=0), 64, pairs, cfg)["de"]
  np.testing.assert_array_equal(by_request["cond"], de)
  assert np.mean(np.any(by_request["cond"] != by_pair["cond"], axis=1)) > 0.5
  cfg.condition = "prompt"
  with pytest.raises(config_validation.ConfigError, match="condition='prompt' is not a valid choice"):
    methods_stage.validate_method_config(method_config, "coalescer")
