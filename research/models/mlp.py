"""Multi-layer perceptron classifier (Hinton et al. 2015's MNIST nets)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.common import tap


class MLP(nn.Module):
  """Flatten → [Dense → ReLU → Dropout]* → Dense(num_classes).

  `dropout_input` drops input pixels and `dropout_hidden` hidden units, as in the teacher of
  Hinton et al. 2015 (0.2 / 0.5); both are off in inference (`train=False`).
  Feature taps (collection "taps"): "hidden1".."hiddenN" = each hidden ReLU output (before its
  dropout) and "penultimate" = the output Dense's input (the last hidden layer after dropout, or
  the flattened, dropped-out image when there is no hidden layer).
  """
  widths: Sequence[int]
  num_classes: int
  dropout_input: float = 0.0
  dropout_hidden: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
    for layer, width in enumerate(self.widths):
      x = nn.relu(nn.Dense(width, kernel_init=nn.initializers.he_normal())(x))
      tap(self, f"hidden{layer + 1}", x)
      x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes)(x)
