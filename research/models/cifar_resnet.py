"""CIFAR ResNets (He et al. 2016) and Wide ResNets (Zagoruyko & Komodakis 2016), CRD benchmark.

Architectures as RepDistiller's models/resnet.py and models/wrn.py (Tian et al. 2020): a 3×3 stem,
three stages of basic blocks at strides 1, 2, 2, global average pooling, one Dense. Feature taps
(collection "taps"): "stem", "stage1".."stage3", "penultimate" — RepDistiller's feat[0..4].
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.common import TORCH_DEFAULT, batch_norm, conv, global_avg_pool, tap


class BasicBlock(nn.Module):
  """Post-activation block: conv3×3(stride)-BN-ReLU-conv3×3-BN + shortcut, then ReLU. The shortcut
  is 1×1 conv(stride)-BN when the stride or the width changes, else the identity."""
  width: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    y = nn.relu(batch_norm(train)(conv(self.width, 3, self.stride)(x)))
    y = batch_norm(train)(conv(self.width, 3)(y))
    if self.stride != 1 or x.shape[-1] != self.width:
      x = batch_norm(train)(conv(self.width, 1, self.stride)(x))
    return nn.relu(x + y)


class CifarResNet(nn.Module):
  """resnet{depth}: stem conv3×3-BN-ReLU of `widths[0]` channels, then 3 stages of (depth−2)/6 basic
  blocks of `widths[1:]` channels (RepDistiller: resnet20 = (16, 16, 32, 64), resnet8x4 =
  (32, 64, 128, 256)); global average pooling (RepDistiller: avg_pool(8) on the 8×8 map) → Dense.
  Stage outputs are post-ReLU."""
  depth: int
  widths: Sequence[int]
  num_classes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    assert (self.depth - 2) % 6 == 0, f"depth must be 6n+2, got {self.depth}"
    blocks = (self.depth - 2) // 6
    x = nn.relu(batch_norm(train)(conv(self.widths[0], 3)(x)))
    tap(self, "stem", x)
    for stage, width in enumerate(self.widths[1:]):
      for block in range(blocks):
        x = BasicBlock(width, 2 if stage > 0 and block == 0 else 1)(x, train)
      tap(self, f"stage{stage + 1}", x)
    x = global_avg_pool(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes, kernel_init=TORCH_DEFAULT)(x)


class WideBlock(nn.Module):
  """Pre-activation block: BN-ReLU-conv3×3(stride)-BN-ReLU-conv3×3 + shortcut (no final ReLU).
  When the width changes the shortcut is a 1×1 conv(stride) of the *activated* input, else the
  identity."""
  width: int
  stride: int = 1

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    activated = nn.relu(batch_norm(train)(x))
    y = conv(self.width, 3, self.stride)(activated)
    y = conv(self.width, 3)(nn.relu(batch_norm(train)(y)))
    if x.shape[-1] == self.width:
      assert self.stride == 1, "an identity shortcut cannot downsample"
      return x + y
    return conv(self.width, 1, self.stride)(activated) + y


class WideResNet(nn.Module):
  """wrn_{depth}_{widen}: a plain conv3×3 stem of 16 channels (no BN), 3 stages of (depth−4)/6
  pre-activation blocks of 16·k, 32·k, 64·k channels, BN-ReLU, global average pooling → Dense.
  As in RepDistiller, "stem" and the stage taps are the raw block outputs (pre-activation: the
  next BN-ReLU comes inside the following block, or the final BN-ReLU for stage3)."""
  depth: int
  widen: int
  num_classes: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    assert (self.depth - 4) % 6 == 0, f"depth must be 6n+4, got {self.depth}"
    blocks = (self.depth - 4) // 6
    x = conv(16, 3)(x)
    tap(self, "stem", x)
    for stage, width in enumerate((16 * self.widen, 32 * self.widen, 64 * self.widen)):
      for block in range(blocks):
        x = WideBlock(width, 2 if stage > 0 and block == 0 else 1)(x, train)
      tap(self, f"stage{stage + 1}", x)
    x = global_avg_pool(nn.relu(batch_norm(train)(x)))
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes, kernel_init=TORCH_DEFAULT)(x)


def resnet(depth: int, widths: Sequence[int] = (16, 16, 32, 64)):
  """A constructor num_classes → CifarResNet, as RepDistiller's resnet{depth} / resnet{depth}x4."""
  return lambda num_classes: CifarResNet(depth, tuple(widths), num_classes)


def wrn(depth: int, widen: int):
  """A constructor num_classes → WideResNet, as RepDistiller's wrn_{depth}_{widen}."""
  return lambda num_classes: WideResNet(depth, widen, num_classes)


MODELS = {
    **{f"resnet{d}": resnet(d) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": resnet(8, (32, 64, 128, 256)),
    "resnet32x4": resnet(32, (32, 64, 128, 256)),
    **{f"wrn_{d}_{k}": wrn(d, k) for d in (16, 40) for k in (1, 2)},
}
