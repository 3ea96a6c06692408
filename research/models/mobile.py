"""The CRD benchmark's mobile students: MobileNetV2 ("mobile_half") and ShuffleNet V1 / V2, as in
RepDistiller's models/mobilenetv2.py, ShuffleNetv1.py and ShuffleNetv2.py (CIFAR variants).

Depthwise and group convolutions are `nn.Conv(feature_group_count=...)`, the channel shuffle a
reshape/transpose. Each ends in global average pooling; RepDistiller pools with a fixed window equal
to the last map on 32×32 inputs (2×2 for MobileNetV2, 4×4 for the ShuffleNets), the same there, and
the global mean also accepts 28×28 inputs. Feature taps (collection "taps"): "stem", "stage1"..,
"penultimate", RepDistiller's feat[0..] in the same order.
"""
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from research.models.common import (TORCH_DEFAULT, batch_norm, channel_shuffle, conv,
                                    global_avg_pool, tap)


# ----------------------------------------------------------------------------- MobileNetV2

class InvertedResidual(nn.Module):
  """1×1 expand (×`expand`, kept even for expand=1, as RepDistiller)-BN-ReLU, depthwise 3×3(stride)
  -BN-ReLU, 1×1 project-BN (linear); identity residual when stride 1 and the width is unchanged."""
  width: int
  stride: int
  expand: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    hidden = x.shape[-1] * self.expand
    y = nn.relu(batch_norm(train)(conv(hidden, 1)(x)))
    y = nn.relu(batch_norm(train)(conv(hidden, 3, self.stride, groups=hidden)(y)))
    y = batch_norm(train)(conv(self.width, 1)(y))
    return x + y if self.stride == 1 and x.shape[-1] == self.width else y


class MobileNetV2(nn.Module):
  """RepDistiller's MobileNetV2 for CIFAR (expansion `expand`, width multiplier `width_mult`;
  "mobile_half" = 6, 0.5): stem conv3×3 stride 2-BN-ReLU of 32·w channels, 7 groups of inverted
  residuals (t, c·w, n, s) = (1, 16, 1, 1), (t, 24, 2, 1), (t, 32, 3, 2), (t, 64, 4, 2),
  (t, 96, 3, 1), (t, 160, 3, 2), (t, 320, 1, 1), 1×1 conv-BN-ReLU to 1280, global pool → Dense.

  Stages follow RepDistiller's features: stage1 = groups 0-1 (16×16 on 32×32 inputs), stage2 =
  group 2 (8×8), stage3 = groups 3-4 (4×4), stage4 = groups 5-6 (2×2); their outputs are the
  linear projections (no ReLU), as in the architecture. "penultimate" is the pooled 1280 vector.
  """
  num_classes: int
  expand: int = 6
  width_mult: float = 0.5

  SETTING = ((1, 16, 1, 1), (None, 24, 2, 1), (None, 32, 3, 2), (None, 64, 4, 2),
             (None, 96, 3, 1), (None, 160, 3, 2), (None, 320, 1, 1))  # None = `expand`
  STAGE_ENDS = (1, 2, 4, 6)  # the group after which each stage's tap is taken

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.relu(batch_norm(train)(conv(int(32 * self.width_mult), 3, 2)(x)))
    tap(self, "stem", x)
    for group, (t, c, n, s) in enumerate(self.SETTING):
      for block in range(n):
        x = InvertedResidual(int(c * self.width_mult), s if block == 0 else 1, t or self.expand)(
            x, train)
      if group in self.STAGE_ENDS:
        tap(self, f"stage{self.STAGE_ENDS.index(group) + 1}", x)
    last = int(1280 * self.width_mult) if self.width_mult > 1.0 else 1280
    x = nn.relu(batch_norm(train)(conv(last, 1)(x)))
    x = global_avg_pool(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01))(x)


# ----------------------------------------------------------------------------- ShuffleNetV1

class ShuffleV1Block(nn.Module):
  """1×1 group conv to width/4 (`in_groups` groups)-BN-ReLU, shuffle, depthwise 3×3(stride)-BN,
  1×1 group conv (`groups`) to `width`-BN; stride 1: ReLU(x + y); stride 2: ReLU(concat(y,
  avg_pool3×3/2(x))), so the block's output has width + input channels."""
  width: int
  stride: int
  groups: int
  in_groups: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    mid = self.width // 4
    y = nn.relu(batch_norm(train)(conv(mid, 1, groups=self.in_groups, init=TORCH_DEFAULT)(x)))
    y = channel_shuffle(y, self.in_groups)
    y = nn.relu(batch_norm(train)(conv(mid, 3, self.stride, groups=mid, init=TORCH_DEFAULT)(y)))
    y = batch_norm(train)(conv(self.width, 1, groups=self.groups, init=TORCH_DEFAULT)(y))
    if self.stride == 1:
      return nn.relu(x + y)
    # PyTorch's AvgPool2d(3, 2, padding=1) counts the zero padding: always divides by 9.
    shortcut = nn.avg_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)), count_include_pad=True)
    return nn.relu(jnp.concatenate([y, shortcut], axis=-1))


class ShuffleNetV1(nn.Module):
  """RepDistiller's ShuffleV1: stem conv1×1 to 24-BN-ReLU (stride 1), stages of (4, 8, 4) blocks
  ending at (240, 480, 960) channels, groups 3 (the very first 1×1 conv ungrouped), each stage
  starting with a stride-2 concat block; global pool → Dense. Stage outputs are post-ReLU."""
  num_classes: int
  widths: Sequence[int] = (240, 480, 960)
  blocks: Sequence[int] = (4, 8, 4)
  groups: int = 3

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.relu(batch_norm(train)(conv(24, 1, init=TORCH_DEFAULT)(x)))
    tap(self, "stem", x)
    for stage, (width, n) in enumerate(zip(self.widths, self.blocks)):
      for block in range(n):
        first = block == 0
        in_groups = 1 if stage == 0 and first else self.groups
        x = ShuffleV1Block(width - x.shape[-1] if first else width, 2 if first else 1,
                           self.groups, in_groups)(x, train)
      tap(self, f"stage{stage + 1}", x)
    x = global_avg_pool(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes, kernel_init=TORCH_DEFAULT)(x)


# ----------------------------------------------------------------------------- ShuffleNetV2

class ShuffleV2Block(nn.Module):
  """Split channels in halves (x1, x2); x2 → 1×1-BN-ReLU, depthwise 3×3-BN, 1×1-BN-ReLU;
  shuffle(concat(x1, x2')) with 2 groups."""

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    y = nn.relu(batch_norm(train)(conv(half, 1, init=TORCH_DEFAULT)(x2)))
    y = batch_norm(train)(conv(half, 3, groups=half, init=TORCH_DEFAULT)(y))
    y = nn.relu(batch_norm(train)(conv(half, 1, init=TORCH_DEFAULT)(y)))
    return channel_shuffle(jnp.concatenate([x1, y], axis=-1), 2)


class ShuffleV2Down(nn.Module):
  """Stride-2 unit: left = depthwise 3×3/2-BN, 1×1-BN-ReLU; right = 1×1-BN-ReLU, depthwise
  3×3/2-BN, 1×1-BN-ReLU; each width/2 channels; shuffle(concat(left, right)) with 2 groups."""
  width: int

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
    c, mid = x.shape[-1], self.width // 2
    left = batch_norm(train)(conv(c, 3, 2, groups=c, init=TORCH_DEFAULT)(x))
    left = nn.relu(batch_norm(train)(conv(mid, 1, init=TORCH_DEFAULT)(left)))
    right = nn.relu(batch_norm(train)(conv(mid, 1, init=TORCH_DEFAULT)(x)))
    right = batch_norm(train)(conv(mid, 3, 2, groups=mid, init=TORCH_DEFAULT)(right))
    right = nn.relu(batch_norm(train)(conv(mid, 1, init=TORCH_DEFAULT)(right)))
    return channel_shuffle(jnp.concatenate([left, right], axis=-1), 2)


class ShuffleNetV2(nn.Module):
  """RepDistiller's ShuffleV2 (net size 1): stem conv1×1 to 24-BN-ReLU (stride 1), stages of a
  down unit + (3, 7, 3) basic units at (116, 232, 464) channels, conv1×1 to 1024-BN-ReLU, global
  pool → Dense. Stage taps are the shuffled stage outputs; "penultimate" the pooled 1024 vector."""
  num_classes: int
  widths: Sequence[int] = (116, 232, 464)
  blocks: Sequence[int] = (3, 7, 3)
  last: int = 1024

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    x = nn.relu(batch_norm(train)(conv(24, 1, init=TORCH_DEFAULT)(x)))
    tap(self, "stem", x)
    for stage, (width, n) in enumerate(zip(self.widths, self.blocks)):
      x = ShuffleV2Down(width)(x, train)
      for _ in range(n):
        x = ShuffleV2Block()(x, train)
      tap(self, f"stage{stage + 1}", x)
    x = nn.relu(batch_norm(train)(conv(self.last, 1, init=TORCH_DEFAULT)(x)))
    x = global_avg_pool(x)
    tap(self, "penultimate", x)
    return nn.Dense(self.num_classes, kernel_init=TORCH_DEFAULT)(x)


MODELS = {
    "mobilenetv2": lambda num_classes: MobileNetV2(num_classes),
    "shufflenetv1": lambda num_classes: ShuffleNetV1(num_classes),
    "shufflenetv2": lambda num_classes: ShuffleNetV2(num_classes),
}
