"""CIFAR VGGs with BatchNorm of the CRD benchmark (RepDistiller's models/vgg.py, `vgg*_bn`).

Five groups of conv3×3(+bias)-BN-ReLU; 2×2 max pooling after groups 0, 1, 2 (after group 3 too,
but only for 64×64 inputs, as RepDistiller), global average pooling (RepDistiller's
AdaptiveAvgPool2d(1)) → Dense(512 → classes); no fully connected hidden layers.

Feature taps (collection "taps"), each group's post-ReLU output before its pool: "stem" = group 0
(full resolution), "stage1".."stage4" = groups 1..4, then "penultimate". This keeps RepDistiller's
feature index i equal to the i-th tap for every model of the family (feat[0] = stem,
feat[i] = stage{i}, feat[-1] = penultimate), e.g. its FitNets hint layer 2 = "stage2".
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.common import batch_norm, conv, global_avg_pool, tap

# Channels of the convs in each of the five groups (RepDistiller's cfg "S", "A", "B").
GROUPS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
}


class VGG(nn.Module):
  """VGG of `groups` (a tuple of conv widths per group) with BatchNorm; see the module docstring."""
  groups: Sequence[Sequence[int]]
  num_classes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    pool_after_group3 = x.shape[1] == 64
    for group, widths in enumerate(self.groups):
      for width in widths:
        x = nn.relu(batch_norm(train)(conv(width, 3, bias=True)(x)))
      tap(self, "stem" if group == 0 else f"stage{group}", x)
      if group < 3 or (group == 3 and pool_after_group3):
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # VALID: floors odd sizes, like PyTorch
    x = global_avg_pool(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01))(x)


MODELS = {name: (lambda num_classes, g=groups: VGG(g, num_classes))
          for name, groups in GROUPS.items()}
