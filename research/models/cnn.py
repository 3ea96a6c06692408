"""Small convolutional classifiers for 28×28 / 32×32 inputs: a plain CNN and a ResNet."""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.common import tap


class CNN(nn.Module):
  """[(Conv3×3 → ReLU)×convs_per_stage → MaxPool2]* per entry of `widths` → global average → Dense.

  Feature taps (collection "taps"): "stage1".. = each stage's last ReLU output, before its pool
  (as for VGG), and "penultimate" = the Dense's input (after dropout, so equal to the pooled
  vector in inference).
  """
  widths: Sequence[int]
  num_classes: int
  dropout_hidden: float = 0.0
  convs_per_stage: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    for stage, width in enumerate(self.widths):
      for _ in range(self.convs_per_stage):
        x = nn.relu(nn.Conv(width, (3, 3), kernel_init=nn.initializers.he_normal())(x))
      tap(self, f"stage{stage + 1}", x)
      x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(self.dropout_hidden, deterministic=not train)(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes)(x)


class ResidualBlock(nn.Module):
  """Pre-activation-free basic block: conv-BN-ReLU-conv-BN + (projected) shortcut, ReLU."""
  width: int
  stride: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    norm = lambda: nn.BatchNorm(use_running_average=not train, momentum=0.9, axis_name=_axis(train))
    y = nn.Conv(self.width, (3, 3), self.stride, use_bias=False)(x)
    y = nn.relu(norm()(y))
    y = nn.Conv(self.width, (3, 3), use_bias=False)(y)
    y = norm()(y)
    if x.shape != y.shape:
      x = norm()(nn.Conv(self.width, (1, 1), self.stride, use_bias=False)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """A CIFAR-style ResNet: stem conv, stages of basic blocks (stride 2 between stages), GAP, Dense.

  BatchNorm statistics are averaged over the `data` axis during training, so a step on N
  devices normalises with the same statistics as one device on the whole batch. Feature taps
  (collection "taps"): "stem" (conv-BN-ReLU), "stage1".. (each stage's last block, post-ReLU),
  "penultimate" (the pooled vector fed to the Dense).
  """
  widths: Sequence[int]
  num_classes: int
  blocks_per_stage: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.Conv(self.widths[0], (3, 3), use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9,
                             axis_name=_axis(train))(x))
    tap(self, "stem", x)
    for stage, width in enumerate(self.widths):
      for block in range(self.blocks_per_stage):
        stride = 2 if stage > 0 and block == 0 else 1
        x = ResidualBlock(width, stride)(x, train)
      tap(self, f"stage{stage + 1}", x)
    x = jnp.mean(x, axis=(1, 2))
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes)(x)


def _axis(train: bool):
  """Batch statistics are synchronised over devices only in training, inside the data-parallel step."""
  return "data" if train else None
