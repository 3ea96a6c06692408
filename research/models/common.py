"""Layers shared by the CIFAR model family (RepDistiller's PyTorch definitions, in linen).

Convolutions pad like PyTorch (`kernel // 2` on every side, not XLA's "SAME"), so a stride-2 3×3
conv samples the same pixels as `nn.Conv2d(..., stride=2, padding=1)` and weights could be ported
one to one. Initialisers follow RepDistiller's: He-normal over fan-out for the ResNets, WRNs, VGGs
and MobileNetV2, PyTorch's default (uniform, variance 1/(3·fan_in)) where it keeps the default;
biases start at zero everywhere.

Submodules keep flax's automatic CamelCase names (Conv_0, BatchNorm_0, BasicBlock_3, Dense_0):
lower-case top-level names are reserved for the sown feature taps (research/methods/taps.py).
"""
import flax.linen as nn
import jax.numpy as jnp

HE_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
TORCH_DEFAULT = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def tap(module: nn.Module, name: str, x: jnp.ndarray) -> None:
  """Records feature `name` of `module` in the "taps" collection (one value, as a 1-tuple), when
  the caller made "taps" mutable; never during `init`, so initial variables hold no features."""
  if not module.is_initializing():
    module.sow("taps", name, x)


def conv(features: int, kernel: int, stride: int = 1, groups: int = 1, bias: bool = False,
         init=HE_FAN_OUT) -> nn.Conv:
  """A k×k conv with PyTorch's symmetric padding k//2; `groups` = channels for a depthwise conv."""
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=kernel // 2,
                 feature_group_count=groups, use_bias=bias, kernel_init=init)


def batch_norm(train: bool) -> nn.BatchNorm:
  """PyTorch's BatchNorm2d (momentum 0.1 = flax 0.9, eps 1e-5); statistics are averaged over the
  `data` axis in training, so the data-parallel step normalises like one device on the whole
  batch."""
  return nn.BatchNorm(use_running_average=not train, momentum=0.9,
                      axis_name="data" if train else None)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W, C) → (B, C). RepDistiller pools with a fixed window (avg_pool(8) / (4)) equal to the
  final map on 32×32 inputs; the global mean is the same there and also works on 28×28 inputs."""
  return jnp.mean(x, axis=(1, 2))


def channel_shuffle(x: jnp.ndarray, groups: int) -> jnp.ndarray:
  """ShuffleNet's channel shuffle: channel j·(C/g) + i (group j, position i) moves to i·g + j, as
  PyTorch's view(N, g, C/g, H, W).transpose(1, 2) does in NCHW."""
  *lead, channels = x.shape
  x = x.reshape(*lead, groups, channels // groups)
  return jnp.swapaxes(x, -1, -2).reshape(*lead, channels)
