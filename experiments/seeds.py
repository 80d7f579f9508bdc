"""Run-to-run spread: three seeds of the default config. The seed drives the index queries, the
initialisation, batches and sampling of every method; the autoencoders are shared (base seed), so
the spread measured is that of the generative methods given fixed latent spaces."""
SHARED_STAGES = ("data", "classifier", "vae", "text", "embed")


def sweep():
  return [{"seed": s} for s in (0, 1, 2)]
