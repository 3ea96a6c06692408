"""Multi-layer perceptron classifier (Hinton et al. 2015's MNIST nets)."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
  """Flatten → [Dense → ReLU → Dropout]* → Dense(num_classes).

  `dropout_input` drops input pixels and `dropout_hidden` hidden units, as in the teacher of
  Hinton et al. 2015 (0.2 / 0.5); both are off in inference (`train=False`).
  """
  widths: Sequence[int]
  num_classes: int
  dropout_input: float = 0.0
  dropout_hidden: float = 0.0

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = x.reshape((x.shape[0], -1))
    x = nn.Dropout(self.dropout_input, deterministic=not train)(x)
    for width in self.widths:
      x = nn.relu(nn.Dense(width, kernel_init=nn.initializers.he_normal())(x))
      x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
    return nn.Dense(self.num_classes)(x)
