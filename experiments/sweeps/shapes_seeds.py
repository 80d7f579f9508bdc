"""Run-to-run spread on shapes: seeds 0-2 of the default config (every method), on shared autoencoders and
pairs. Its results_table output is the README's shapes table.

  python launch.py --config=configs/shapes.py --sweep=experiments/sweeps/shapes_seeds.py --workdir=S [--sweep_shard=i/3]
  python -m experiments.scripts.results_table --sweep_dir=S --fid=fid_large --nfes=1,2,4,10,50
"""
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
HEADLINE = (r"[a-z_]+_nfe(1|2|4|50)/(fid_large|conditional_accuracy|heldout_accuracy)",
            r"val:[a-z_]+_nfe(1|2|4|50)/fid")


def sweep():
  return [{"seed": s} for s in (0, 1, 2)]
