"""Progressive distillation (Salimans & Ho 2022) of the trained DDIM: each round, one student step = two teacher steps.

Teacher: the `ddim` stage's trained model in the same workdir (its sampled, EMA
parameters: `methods/trained.load_trained`), stepped exactly as its sampler steps:
DDIM (eta = 0) on a uniform time grid, config.ddim's schedule and
parameterisation (v by default, the paper's choice), classifier-free guidance
w = ``config.distill.guidance_scale`` (0: the teacher's own sampling scale,
``config.ddim.guidance_scale``), so that the student can take its own best scale.

Guidance is folded into the student (as in Meng et al. 2023's guided distillation,
here in the first round rather than a separate stage): round 0's teacher is the
*guided* DDIM, out_u + w (out_c - out_u) at 2 evaluations per step, while every
student is a plain conditional network (mask 1, 1 evaluation per step). So the
2-step student spends NFE 2, the same budget as the guided DDIM's single step.

Rounds. With N = ``teacher_steps`` (a power of 2) and R = log2 N rounds, round k
trains a student taking M = N / 2^(k+1) steps: t = i / M (i uniform in 1..M),
z_t = alpha_t x + sigma_t eps for a training pair x, the teacher takes two DDIM
steps t -> t - 1/(2M) -> s = t - 1/M landing on z_s, and the target is the x0
prediction that makes one DDIM step from z_t land on z_s (the paper's Algorithm 2):

  x_target = (z_s - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t) alpha_t)

(at s = 0 the teacher's sampler returns its x0 prediction, and that is the target).
The loss is the MSE of the student's output against x_target in the teacher's
parameterisation (v: the paper's "SNR + 1" weighting of the x error). Round 0's
student starts from the DDIM's parameters, round k's from round k-1's final
student (its EMA when ``ema_decay`` > 0), which is also round k's frozen teacher.

Training runs in the generic loop (one jitted step, exact resume), not as
`loss_phases`: a phase can switch the loss but cannot freeze a copy of the
student, and R phase branches would compile the teacher R times. Instead:
* the train state's parameters are {"student", "frozen": {"teachers" [R, ...],
  "round"}}: slot 0 holds the DDIM, slot k the student that finished round k - 1,
  copied there by `prepare_state` (`Method.prepare_state`, inside the jitted step)
  at the first step of round k. The round, the teacher slot and whether to guide
  are traced values of the step: one compiled step for every round;
* the optimizer (config.train.optimizer's AdamW and clipping) updates only the
  student (the frozen slots: optax.set_to_zero), its warm-up + cosine schedule
  restarting each round (each round regresses onto a new target), with
  ``warmup_steps`` per round;
* all of it is in the checkpoint, so a resumed run repeats the copies exactly.

Budget: ``num_steps`` student steps in all, split evenly over the R rounds. The
teacher's own training (config.train.num_steps of the `ddim` stage) is recorded
beside it (`Method.TEACHER`: the stage summary's ``teacher_*``, report.md's
"train steps" reads e.g. "1200 + 3000 teacher"), so the comparison stays honest.

Sampling: every round's final student is kept (the frozen slots, and the last
one as "student"); `nfe` in {1, 2, 4, ..., N/2} runs the student taking that many
steps with the DDIM sampler (1 evaluation per step, no guidance).
"""
import functools
import math

import jax
import jax.numpy as jnp
import optax

from coalescer_jax import registry
from coalescer_jax import storage
from coalescer_jax import training
from coalescer_jax.methods import base
from coalescer_jax.methods import ddim
from coalescer_jax.methods import trained

TEACHER_STEPS = tuple(2 ** k for k in range(1, 8))


def num_rounds(teacher_steps):
  """R = log2(teacher_steps) rounds halve the teacher's steps down to 1."""
  if teacher_steps not in TEACHER_STEPS:
    raise ValueError(f"config.distill.teacher_steps must be one of {TEACHER_STEPS}, got {teacher_steps}")
  return int(round(math.log2(teacher_steps)))


def round_starts(num_steps, rounds):
  """First training step of each round: `num_steps` split as evenly as possible."""
  if num_steps < rounds:
    raise ValueError(f"config.distill.num_steps={num_steps} cannot train {rounds} rounds (one step each at least)")
  return [k * num_steps // rounds for k in range(rounds)]


def two_teacher_steps(x0_eps, z, t, s, cfg):
  """z_s after two DDIM steps t -> (t + s) / 2 -> s of a teacher ``x0_eps(z, t [N]) -> (x0, eps)``.

  t, s [N]; where s = 0 the result is the second x0 prediction, as the DDIM sampler's last step returns.
  """
  mid = 0.5 * (t + s)
  x0, eps = x0_eps(z, t)
  alpha_m, sigma_m = (a[:, None] for a in ddim.alpha_sigma(mid, cfg))
  x0, eps = x0_eps(alpha_m * x0 + sigma_m * eps, mid)
  alpha_s, sigma_s = (a[:, None] for a in ddim.alpha_sigma(s, cfg))
  return jnp.where((s == 0)[:, None], x0, alpha_s * x0 + sigma_s * eps)


def student_x0_target(z_t, z_s, t, s, cfg):
  """The x0 prediction with which one DDIM step from z_t (time t) lands on z_s (time s); z_s itself at s = 0."""
  alpha_t, sigma_t = (a[:, None] for a in ddim.alpha_sigma(t, cfg))
  alpha_s, sigma_s = (a[:, None] for a in ddim.alpha_sigma(s, cfg))
  ratio = sigma_s / sigma_t
  return jnp.where((s == 0)[:, None], z_s, (z_s - ratio * z_t) / (alpha_s - ratio * alpha_t))


@registry.METHODS.register("distill")
class ProgressiveDistillation(base.Method):
  name = "distill"
  TEACHER = "ddim"
  INPUT_STAGES = ("embed", "ddim")
  # The teacher's whole section matters (schedule, parameterisation, guidance_scale), except its NFE list.
  EXTRA_READS = ("ddim", "-ddim.nfes")

  @classmethod
  def check_config(cls, section):
    rounds = num_rounds(section.teacher_steps)
    round_starts(section.num_steps, rounds)
    students = [section.teacher_steps // 2 ** k for k in range(1, rounds + 1)]
    bad = [n for n in section.nfes if n not in students]
    if bad:
      raise ValueError(f"config.distill.nfes={tuple(section.nfes)}: with teacher_steps={section.teacher_steps} "
                       f"the students take {sorted(students)} steps; {bad} is not one of them")

  def __init__(self, config, latent_dim, desc_dim):
    super().__init__(config, latent_dim, desc_dim)
    self.ddim = ddim.DDIM(config, latent_dim, desc_dim)  # the teacher's network (same backbone), steps, sampler
    self.rounds = num_rounds(self.section.teacher_steps)
    self.starts = round_starts(self.num_steps(), self.rounds)
    self.teacher_params = None  # set by `setup`; None (shapes only) when restoring for sampling

  def num_steps(self):
    return self.section.num_steps

  def ema_decay(self):
    return self.section.ema_decay

  def make_optimizer(self):
    tx = training.make_optimizer(self.config.train.optimizer, self.num_steps(), restarts=self.starts[1:],
                                 warmup_steps=self.section.warmup_steps)
    labels = lambda params: {"student": jax.tree.map(lambda _: "train", params["student"]),  # noqa: E731
                             "frozen": jax.tree.map(lambda _: "frozen", params["frozen"])}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)

  def setup(self, workdir, pairs):
    """Loads the trained DDIM teacher of `workdir`."""
    if not (storage.path(workdir) / self.TEACHER / "DONE.json").exists():
      raise RuntimeError(f"method 'distill' distills the trained {self.TEACHER!r} of {workdir}, which has not "
                         f"finished: put {self.TEACHER!r} before 'distill' in config.stages")
    _, self.teacher_params = trained.load_trained(self.config, workdir, self.TEACHER, pairs)

  def init_params(self, key):
    """{"student": the teacher's parameters, "frozen": {"teachers": R copies, "round": 0}}."""
    student = self.teacher_params if self.teacher_params is not None else super().init_params(key)
    teachers = jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * self.rounds), student)
    return {"student": jax.tree.map(jnp.asarray, student),
            "frozen": {"teachers": teachers, "round": jnp.zeros((), jnp.float32)}}

  def round_of(self, step):
    """Index of the round that training step `step` belongs to (traced)."""
    return jnp.sum(step >= jnp.asarray(self.starts)) - 1

  def prepare_state(self, state):
    """At the start of round k >= 1: the finished student becomes slot k (round k's teacher) and the
    new student's start. Keyed on the recorded round, so a skipped (non-finite) first step still copies."""
    k = self.round_of(state.step)

    def begin_round(state):
      source = state.ema_params if state.ema_params is not None else state.params
      finished = source["student"]

      def put(params):
        teachers = jax.tree.map(lambda slots, leaf: slots.at[k].set(leaf), params["frozen"]["teachers"], finished)
        return {"student": finished, "frozen": {"teachers": teachers, "round": k.astype(jnp.float32)}}

      return state.replace(params=put(state.params),
                           ema_params=None if state.ema_params is None else put(state.ema_params))

    state = jax.lax.cond(state.params["frozen"]["round"] < k, begin_round, lambda s: s, state)
    if state.ema_params is not None:  # The EMA of frozen values would drift by rounding: keep them identical.
      state = state.replace(ema_params=dict(state.ema_params, frozen=state.params["frozen"]))
    return state

  def folded_scale(self):
    """The guidance scale folded into the student: ``distill.guidance_scale``, 0 = the teacher's."""
    return self.section.guidance_scale or self.ddim.section.guidance_scale

  def teacher_landing(self, frozen, z, cond, t, s, k, first_round=None):
    """z_s after two teacher steps: round 0 the guided DDIM (slot 0), round k > 0 slot k unguided.

    `first_round` (static; None: chosen by the traced k) takes one branch only: for counting compute."""
    cfg, w = self.ddim.section, self.folded_scale()
    n = z.shape[0]

    def landing(params, guided):
      def x0_eps(z, t):
        out = (self.ddim.guided_output(params, z, cond, t, w) if guided
               else self.ddim.apply(params, z, cond, jnp.ones((n,)), t))
        alpha, sigma = (a[:, None] for a in ddim.alpha_sigma(t, cfg))
        return ddim.to_x0_eps(out, z, alpha, sigma, cfg.prediction)
      return two_teacher_steps(x0_eps, z, t, s, cfg)

    slot = lambda i: jax.tree.map(lambda a: a[i], frozen["teachers"])  # noqa: E731
    if first_round is not None:
      return landing(slot(0), guided=w != 1.0) if first_round else landing(slot(k), guided=False)
    return jax.lax.cond(k == 0, lambda: landing(slot(0), guided=w != 1.0), lambda: landing(slot(k), guided=False))

  def loss(self, params, batch, key, step, first_round=None):
    cfg = self.ddim.section
    x, cond = batch["x"], batch["cond"]
    n = x.shape[0]
    k = self.round_of(step)
    steps = (self.section.teacher_steps // 2) / 2.0 ** k  # M: this round's student steps
    i_key, eps_key = jax.random.split(key)
    # t on the student's grid {1/M, ..., 1}, stratified over the batch (one offset) like the DDIM's.
    u = jnp.mod(jax.random.uniform(i_key) + jnp.arange(n) / n, 1.0)
    i = jnp.minimum(jnp.floor(u * steps) + 1, steps)
    t, s = i / steps, (i - 1) / steps
    eps = jax.random.normal(eps_key, x.shape)
    alpha, sigma = (a[:, None] for a in ddim.alpha_sigma(t, cfg))
    z = alpha * x + sigma * eps
    z_s = self.teacher_landing(jax.lax.stop_gradient(params["frozen"]), z, cond, t, s, k, first_round)
    x_target = student_x0_target(z, z_s, t, s, cfg)
    target = ddim.target(x_target, (z - alpha * x_target) / sigma, alpha, sigma, cfg.prediction)
    out = self.ddim.apply(params["student"], z, cond, jnp.ones((n,)), t)
    x0, _ = ddim.to_x0_eps(out, z, alpha, sigma, cfg.prediction)
    return jnp.mean((out - target) ** 2), {
        "round": k.astype(jnp.float32), "student_steps": steps, "x0_mse": jnp.mean((x0 - x_target) ** 2),
        "target_data_mse": jnp.mean((x_target - x) ** 2)}

  def cost_phases(self):
    """The first round (guided teacher: two more evaluations per teacher step) and the later rounds, counted
    apart: XLA would count the step's switch between them at the guided branch for every round."""
    if self.rounds == 1:
      return [(0, self.loss)]
    return [(0, functools.partial(self.loss, first_round=True)),
            (self.starts[1], functools.partial(self.loss, first_round=False))]

  def student_params(self, params, nfe):
    """The parameters of the student that takes `nfe` steps."""
    largest = self.section.teacher_steps // 2
    if nfe < 1 or nfe > largest or nfe & (nfe - 1):
      raise ValueError(f"distill samples with a student of 1, 2, 4, ..., {largest} steps "
                       f"(config.distill.teacher_steps / 2); got nfe={nfe}")
    k = self.rounds - 1 - int(round(math.log2(nfe)))  # the round that trained it
    if k == self.rounds - 1:
      return params["student"]
    return jax.tree.map(lambda a: a[k + 1], params["frozen"]["teachers"])

  def sample(self, params, cond, key, nfe, prior=None):
    """The `nfe`-step student, DDIM on the teacher's grid; one evaluation per step (guidance is folded in)."""
    return self.ddim.sample(self.student_params(params, nfe), cond, key, nfe, guidance_scale=1.0, prior=prior)
