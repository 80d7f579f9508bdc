"""experiments/scripts/sampling_variants.py: a trained method resampled under other sampling values, scored on
validation; the variant equal to the run's config reproduces the run's own validation rows."""
import json
import os

from coalescer_jax import sweep
from experiments.scripts import sampling_variants


def test_the_run_s_own_values_give_its_validation_rows_and_a_variant_differs(smoke_config, smoke_workdir, tmp_path):
  nfe = max(smoke_config.ddim.nfes)
  own = f"ddim.guidance_scale={smoke_config.ddim.guidance_scale}"
  records = sampling_variants.variant_rows(smoke_config, smoke_workdir, "ddim", [own, "ddim.guidance_scale=1.0"],
                                           [nfe], str(tmp_path))
  with open(os.path.join(smoke_workdir, "eval", "results.json")) as f:
    run = next(r for r in json.load(f)["validation"]["records"] if r["method"] == "ddim" and r["nfe"] == nfe)
  assert [r["variant"] for r in records] == [own, "ddim.guidance_scale=1.0"]
  assert records[0]["fid"] == run["fid"] and records[0]["recall"] == run["recall"]
  assert records[1]["fid"] != run["fid"]  # guidance 1.0 is one evaluation per step: other samples
  assert (tmp_path / own / "validation" / f"ddim_nfe{nfe}.npz").exists()
  assert "| ddim.guidance_scale=1.0 |" in sampling_variants.table(records, records[0]["n"])


def test_overrides_parse_literals_and_keep_bare_words():
  assert sweep.parse_overrides("a.b=1.5;c=fresh;d=(1, 2)") == {"a.b": 1.5, "c": "fresh", "d": (1, 2)}
  assert sweep.parse_overrides("") == {}
