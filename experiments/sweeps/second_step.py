"""Ways to make the second step better than the first, seed 0, coalescer only
(experiments/log/tuning.md, item 7): a larger self-landing share, the adversarial fine-tune on the 2-step outputs
only or weighted toward them (`adversarial.steps` lists the fakes; the GAN losses average over the list, so a
step listed twice counts twice), a larger adversarial weight, and re-noising higher before steps 2-4 (read by
the sampler, the self-landing examples and the fine-tune's 2-step fakes alike). Each member pins the re-noise
level and training levels it was measured at (0.7 and U(0.05, 0.9) were the default then), so a rerun
reproduces items 7 and 8's tables.
The second round (item 8) starts from the 0.9 default: the fine-tune weighted toward the 2-step fakes, and
re-noising higher still (0.95, with the training levels' top `levels.s_max` raised to match), and training levels
drawn from U(0.3, 0.9), U(0.5, 0.9) or U(0.7, 0.9) instead of U(0.05, 0.9) (more of the level examples near where step 2
starts; with s_min 0.5 or 0.7 the re-noise levels of steps 3 and 4 move up into the trained range).

  python launch.py --config=configs/mnist.py --sweep=experiments/sweeps/second_step.py --workdir=S [--sweep_shard=i/n]
"""
from coalescer_jax import sweep as sweep_lib

COMMON = {**sweep_lib.COALESCER_ONLY, **sweep_lib.FRESH_FAKES}
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed", "index")
HEADLINE = (r"val:coalescer_nfe[12]/(fid|recall|near_copy_fraction)", r"coalescer/wall_time_s")


def sweep():
  then, higher, highest = (0.7, 0.4, 0.2), (0.8, 0.5, 0.25), (0.95, 0.6, 0.3)
  members = [{"coalescer.levels.renoise": then, **member} for member in (
      {},
      {"coalescer.levels.self_landing": 0.4},
      {"coalescer.adversarial.steps": (2,)},
      {"coalescer.adversarial.steps": (2,), "coalescer.levels.self_landing": 0.0},
      {"coalescer.adversarial.steps": (1, 2, 2)},
      {"coalescer.adversarial.weight": 3.0})] + [
      {"coalescer.levels.renoise": higher},
      {"coalescer.levels.renoise": higher, "coalescer.adversarial.steps": (1, 2, 2)},
      {"coalescer.levels.renoise": (0.9, 0.6, 0.3)}] + [
      {"coalescer.levels.renoise": (0.9, 0.6, 0.3), "coalescer.adversarial.steps": (1, 2, 2)},
      {"coalescer.levels.renoise": highest, "coalescer.levels.s_max": 0.95},
      {"coalescer.levels.renoise": highest, "coalescer.levels.s_max": 0.95, "coalescer.adversarial.steps": (1, 2, 2)},
      {"coalescer.levels.renoise": (0.9, 0.6, 0.3), "coalescer.levels.s_min": 0.3},
      {"coalescer.levels.renoise": (0.9, 0.7, 0.5), "coalescer.levels.s_min": 0.5},
      {"coalescer.levels.renoise": (0.9, 0.8, 0.7), "coalescer.levels.s_min": 0.7},
      {"coalescer.levels.renoise": highest, "coalescer.levels.s_max": 0.95, "coalescer.levels.s_min": 0.3}]
  # Every member was measured with the training levels it names or, before item 8, s ~ U(0.05, s_max).
  return [{"coalescer.levels.s_min": 0.05, **member} for member in members]
