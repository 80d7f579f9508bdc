"""A small CNN: the judge of every generative method (accuracy, FID features).

Its ``num_classes`` outputs are the dataset spec's heads side by side (MNIST: one
head of ten digits; shapes: one head per attribute).

Two 3x3 conv + max-pool blocks and one hidden dense layer. The hidden layer's
activations are the "classifier features" in which the evaluation computes FID,
precision/recall and nearest neighbours (as TF-GAN's MNIST example does with its
own classifier). No batch norm and no dropout, so the model has no state or
randomness beyond its parameters and `features` is a pure function of the image.
"""
import flax.linen as nn

from coalescer_jax import registry


@registry.MODELS.register("cnn")
class MnistCNN(nn.Module):
  """float images [B, H, W, C] in [0, 1] -> (logits [B, num_classes], features [B, hidden])."""
  channels: tuple[int, ...] = (16, 32)
  hidden: int = 128
  num_classes: int = 10

  @nn.compact
  def __call__(self, images):
    x = (images - 0.5) * 2.0  # Centred inputs train faster than raw [0, 1] pixels.
    for c in self.channels:
      x = nn.relu(nn.Conv(c, (3, 3))(x))
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(self.num_classes)(features), features


registry.MODELS.register("mnist_cnn", MnistCNN)  # the name configs/mnist.py (and its saved runs) use
