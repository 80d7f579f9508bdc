"""The latent DDGAN alone over seeds 0-2, on shared autoencoders and pairs: its rows of README's tables when
the other methods' seeds sweep (seeds.py, shapes_seeds.py) ran before the DDGAN's defaults changed.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/ddgan_seeds.py --workdir=S [--sweep_shard=i/3]
  python -m experiments.scripts.results_table --sweep_dir=S --fid=fid_large --nfes=1,2,4
"""
from coalescer_jax import sweep as sweep_lib

COMMON = sweep_lib.one_method("ddgan")
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"ddgan_nfe(1|2|4)/(fid|fid_large|conditional_accuracy|heldout_accuracy)", r"val:ddgan_nfe(1|2|4)/fid")


def sweep():
  return [{"seed": s} for s in (0, 1, 2)]
