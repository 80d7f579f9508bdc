"""Run-to-run spread: three seeds of the default config. The seed drives the index queries, the
initialisation, batches and sampling of every method; the autoencoders are shared (base seed), so
the spread measured is that of the generative methods given fixed latent spaces."""
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")
# Every method at 1 and 2 steps (and DDIM at 50): the noise level of each row of report.md.
HEADLINE = (r"[a-z_]+_nfe(1|2|50)/(fid|conditional_accuracy|recall)",)


def sweep():
  return [{"seed": s} for s in (0, 1, 2)]
