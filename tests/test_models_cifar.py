"""The CIFAR model family of the CRD benchmark (RepDistiller) and the feature taps of every model.

Parameter counts are derived from RepDistiller's PyTorch definitions (models/resnet.py, wrn.py,
vgg.py, mobilenetv2.py, ShuffleNetv1.py, ShuffleNetv2.py): PyTorch counts a conv's
k·k·(in/groups)·out weights (+ out biases), a BatchNorm2d's weight and bias (running statistics
are buffers, as flax's batch_stats), a Linear's in·out + out. Shapes and counts come from
jax.eval_shape (tracing only); real forward passes run on a few small models.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research import models
from research.errors import UserError
from research.models import common
from research.models.cnn import CNN, ResNet
from research.models.mlp import MLP
from test_models import count, images, init_numpy, init_shapes

CIFAR = (32, 32, 3)


# ----------------------------------------------------------------------------- PyTorch counts

def conv(k, c_in, c_out, groups=1, bias=False):
  return k * k * (c_in // groups) * c_out + (c_out if bias else 0)


def bn(c):
  return 2 * c


def linear(n_in, n_out):
  return n_in * n_out + n_out


def torch_resnet(depth, filters, classes):
  """RepDistiller's ResNet(depth, num_filters, 'basicblock'): conv1-bn1, layer1..3 of (depth−2)/6
  BasicBlocks (downsample = 1×1 conv + BN when stride ≠ 1 or inplanes ≠ planes), fc."""
  n, total, inplanes = (depth - 2) // 6, conv(3, 3, filters[0]) + bn(filters[0]), filters[0]
  for planes, stride in zip(filters[1:], (1, 2, 2)):
    for i in range(n):
      total += conv(3, inplanes, planes) + bn(planes) + conv(3, planes, planes) + bn(planes)
      if (i == 0 and stride != 1) or inplanes != planes:
        total += conv(1, inplanes, planes) + bn(planes)
      inplanes = planes
  return total + linear(filters[3], classes)


def torch_wrn(depth, k, classes):
  """RepDistiller's WideResNet: conv1 (no BN), 3 NetworkBlocks of (depth−4)/6 BasicBlocks
  (bn1, conv1, bn2, conv2, convShortcut when in ≠ out), bn1, fc."""
  n, channels = (depth - 4) // 6, (16, 16 * k, 32 * k, 64 * k)
  total = conv(3, 3, 16)
  for c_in, c_out in zip(channels, channels[1:]):
    for i in range(n):
      c = c_in if i == 0 else c_out
      total += bn(c) + conv(3, c, c_out) + bn(c_out) + conv(3, c_out, c_out)
      total += conv(1, c, c_out) if c != c_out else 0
  return total + bn(channels[3]) + linear(channels[3], classes)


def torch_vgg(cfg, classes):
  """RepDistiller's VGG(cfg, batch_norm=True): conv3×3 with bias + BN per entry, classifier 512."""
  total, c_in = 0, 3
  for group in cfg:
    for v in group:
      total, c_in = total + conv(3, c_in, v, bias=True) + bn(v), v
  return total + linear(512, classes)


def torch_mobile_half(classes):
  """mobilenetv2_T_w(6, 0.5): conv_bn(3, 16, 2), InvertedResidual(inp, oup, s, t) = pw(inp →
  inp·t) + BN, dw 3×3 + BN, pw-linear(→ oup) + BN (the pw conv exists for t = 1 too),
  conv_1x1_bn(160, 1280)."""
  setting = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
  total, inp = conv(3, 3, 16) + bn(16), 16
  for t, c, n in setting:
    oup = int(c * 0.5)
    for _ in range(n):
      hidden = inp * t
      total += (conv(1, inp, hidden) + bn(hidden) + conv(3, hidden, hidden, groups=hidden)
                + bn(hidden) + conv(1, hidden, oup) + bn(oup))
      inp = oup
  return total + conv(1, 160, 1280) + bn(1280) + linear(1280, classes)


def torch_shufflev1(classes):
  """ShuffleV1: conv1 1×1 3 → 24 + bn1; Bottleneck(in, out − in (first of a layer) or out,
  groups 3): conv1 1×1 in → out/4 (groups 1 if in == 24) + BN, dw 3×3 + BN, conv3 1×1 → out
  (groups 3) + BN."""
  total, in_planes = conv(1, 3, 24) + bn(24), 24
  for out_planes, n in zip((240, 480, 960), (4, 8, 4)):
    for i in range(n):
      out = out_planes - (in_planes if i == 0 else 0)
      mid = out // 4
      total += (conv(1, in_planes, mid, groups=1 if in_planes == 24 else 3) + bn(mid)
                + conv(3, mid, mid, groups=mid) + bn(mid) + conv(1, mid, out, groups=3) + bn(out))
      in_planes = out_planes
  return total + linear(960, classes)


def torch_shufflev2(classes):
  """ShuffleV2 (net size 1): conv1 1×1 3 → 24 + bn1; per layer a DownBlock(in, out) (left: dw 3×3
  + BN, 1×1 → out/2 + BN; right: 1×1 → out/2 + BN, dw + BN, 1×1 + BN) and BasicBlocks(out) (on
  out/2 channels: 1×1 + BN, dw + BN, 1×1 + BN); conv2 1×1 464 → 1024 + bn2; linear."""
  total, c_in = conv(1, 3, 24) + bn(24), 24
  for c, n in zip((116, 232, 464), (3, 7, 3)):
    mid = c // 2
    total += conv(3, c_in, c_in, groups=c_in) + bn(c_in) + conv(1, c_in, mid) + bn(mid)
    total += (conv(1, c_in, mid) + bn(mid) + conv(3, mid, mid, groups=mid) + bn(mid)
              + conv(1, mid, mid) + bn(mid))
    total += n * (2 * (conv(1, mid, mid) + bn(mid)) + conv(3, mid, mid, groups=mid) + bn(mid))
    c_in = c
  return total + conv(1, 464, 1024) + bn(1024) + linear(1024, classes)


S, A, B = (((64,), (128,), (256,), (512,), (512,)),
           ((64,), (128,), (256, 256), (512, 512), (512, 512)),
           ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)))
TORCH_COUNTS = {
    **{f"resnet{d}": lambda c, d=d: torch_resnet(d, (16, 16, 32, 64), c)
       for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": lambda c: torch_resnet(8, (32, 64, 128, 256), c),
    "resnet32x4": lambda c: torch_resnet(32, (32, 64, 128, 256), c),
    **{f"wrn_{d}_{k}": lambda c, d=d, k=k: torch_wrn(d, k, c) for d in (16, 40) for k in (1, 2)},
    "vgg8": lambda c: torch_vgg(S, c), "vgg11": lambda c: torch_vgg(A, c),
    "vgg13": lambda c: torch_vgg(B, c), "mobilenetv2": torch_mobile_half,
    "shufflenetv1": torch_shufflev1, "shufflenetv2": torch_shufflev2,
}

# The formulas above for 100 classes, and the totals (in M) published for RepDistiller's CIFAR-100
# models (e.g. the parameter tables of the CRD / DKD / ReviewKD follow-ups).
EXACT_100 = {
    "resnet8": 83_892, "resnet14": 181_108, "resnet20": 278_324, "resnet32": 472_756,
    "resnet44": 667_188, "resnet56": 861_620, "resnet110": 1_736_564, "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860, "wrn_16_1": 180_916, "wrn_16_2": 703_284, "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156, "vgg8": 3_965_028, "vgg11": 9_277_284, "vgg13": 9_462_180,
    "mobilenetv2": 812_836, "shufflenetv1": 949_258, "shufflenetv2": 1_355_528,
}
PUBLISHED_M = {
    "resnet20": 0.28, "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_2": 0.70, "wrn_40_2": 2.26, "vgg8": 3.96, "vgg13": 9.46, "mobilenetv2": 0.81,
    "shufflenetv1": 0.95, "shufflenetv2": 1.36,
}


def test_formulas_match_the_published_totals():
  assert set(EXACT_100) == set(TORCH_COUNTS) == set(models.CIFAR)
  for name, formula in TORCH_COUNTS.items():
    assert formula(100) == EXACT_100[name], name
  for name, millions in PUBLISHED_M.items():
    assert abs(EXACT_100[name] / 1e6 - millions) < 0.01, name


def test_resnet20_and_wrn_16_2_by_hand():
  # resnet20: stem 3·9·16 + 32; 3 blocks of 2×(9·16·16 + 32) at 16 ch; at 32 ch 9·16·32 + 9·32·32
  # + 16·32 (projection) + 3·64 BN, then 2 blocks of 2×(9·32·32 + 64); likewise at 64;
  # fc 64·100 + 100.
  stage1 = 3 * 2 * (9 * 16 * 16 + 32)
  stage2 = 9 * 16 * 32 + 9 * 32 * 32 + 16 * 32 + 3 * 64 + 2 * 2 * (9 * 32 * 32 + 64)
  stage3 = 9 * 32 * 64 + 9 * 64 * 64 + 32 * 64 + 3 * 128 + 2 * 2 * (9 * 64 * 64 + 128)
  assert 3 * 9 * 16 + 32 + stage1 + stage2 + stage3 + 64 * 100 + 100 == EXACT_100["resnet20"]
  # wrn_16_2: 2 blocks per stage at 32, 64, 128 channels; the first of each has a 1×1 shortcut.
  def stage(c_in, c):
    first = 2 * c_in + 9 * c_in * c + 2 * c + 9 * c * c + c_in * c
    return first + 2 * c + 9 * c * c + 2 * c + 9 * c * c
  total = 3 * 9 * 16 + stage(16, 32) + stage(32, 64) + stage(64, 128) + 2 * 128 + 128 * 100 + 100
  assert total == EXACT_100["wrn_16_2"]


@pytest.mark.parametrize("name", sorted(models.CIFAR))
def test_parameter_count_equals_repdistiller(name):
  model = models.CIFAR[name](100)
  variables = init_shapes(model, (1,) + CIFAR)
  assert set(variables) == {"params", "batch_stats"}  # no "taps" recorded by init
  assert count(variables["params"]) == EXACT_100[name]
  # BatchNorm running mean and var: as many as BN scales + biases.
  leaves = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
  bn_params = sum(count(leaf) for path, leaf in leaves if "BatchNorm" in path[-2].key)
  assert count(variables["batch_stats"]) == bn_params


# ----------------------------------------------------------------------------- taps

def traced(model, shape, variables=None):
  """Traces `apply` with "taps" mutable (no compute): (tap shapes without the batch axis, logits
  shape, whether the last Dense called received the "penultimate" tap itself, the same array)."""
  variables = variables if variables is not None else init_shapes(model, shape)
  seen = {}

  def interceptor(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
      seen["dense_input"] = args[0]
    return next_fun(*args, **kwargs)

  def run(v):
    with nn.intercept_methods(interceptor):
      logits, cols = model.apply(v, jnp.zeros(shape), mutable=["taps"])
    seen["identical"] = cols["taps"]["penultimate"][0] is seen["dense_input"]
    return logits, cols

  logits, cols = jax.eval_shape(run, variables)
  assert set(cols) == {"taps"}
  assert all(isinstance(v, tuple) and len(v) == 1 for v in cols["taps"].values())  # sow's 1-tuples
  return {k: v[0].shape[1:] for k, v in cols["taps"].items()}, logits.shape, seen["identical"]


def resnet_taps(stem, c1, c2, c3):
  return {"stem": (32, 32, stem), "stage1": (32, 32, c1), "stage2": (16, 16, c2),
          "stage3": (8, 8, c3), "penultimate": (c3,)}


VGG_TAPS = {"stem": (32, 32, 64), "stage1": (16, 16, 128), "stage2": (8, 8, 256),
            "stage3": (4, 4, 512), "stage4": (4, 4, 512), "penultimate": (512,)}
TAPS_32 = {
    **{f"resnet{d}": resnet_taps(16, 16, 32, 64) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": resnet_taps(32, 64, 128, 256), "resnet32x4": resnet_taps(32, 64, 128, 256),
    "wrn_16_1": resnet_taps(16, 16, 32, 64), "wrn_40_1": resnet_taps(16, 16, 32, 64),
    "wrn_16_2": resnet_taps(16, 32, 64, 128), "wrn_40_2": resnet_taps(16, 32, 64, 128),
    "vgg8": VGG_TAPS, "vgg11": VGG_TAPS, "vgg13": VGG_TAPS,
    # The stride-2 stem halves the map first; RepDistiller's feat[1..4] at 16, 8, 4, 2.
    "mobilenetv2": {"stem": (16, 16, 16), "stage1": (16, 16, 12), "stage2": (8, 8, 16),
                    "stage3": (4, 4, 48), "stage4": (2, 2, 160), "penultimate": (1280,)},
    "shufflenetv1": {"stem": (32, 32, 24), "stage1": (16, 16, 240), "stage2": (8, 8, 480),
                     "stage3": (4, 4, 960), "penultimate": (960,)},
    "shufflenetv2": {"stem": (32, 32, 24), "stage1": (16, 16, 116), "stage2": (8, 8, 232),
                     "stage3": (4, 4, 464), "penultimate": (1024,)},
}


@pytest.mark.parametrize("name", sorted(models.CIFAR))
def test_cifar_taps_shapes(name):
  shapes, logits, identical = traced(models.CIFAR[name](100), (2,) + CIFAR)
  assert shapes == TAPS_32[name]
  assert logits == (2, 100)
  assert identical, "penultimate must be exactly the classifier's input"


@pytest.mark.parametrize("name", sorted(models.CIFAR))
def test_cifar_models_accept_28x28x1(name):
  def run():
    model = models.CIFAR[name](10)
    x = jnp.zeros((2, 28, 28, 1))
    return model.apply(model.init(jax.random.key(0), x), x)
  assert jax.eval_shape(run).shape == (2, 10)


@pytest.mark.parametrize("model,taps", [
    (MLP((32, 16), 10), {"hidden1": (32,), "hidden2": (16,), "penultimate": (16,)}),
    (MLP((), 10), {"penultimate": (3072,)}),
    (CNN((8, 16), 10), {"stage1": (32, 32, 8), "stage2": (16, 16, 16), "penultimate": (16,)}),
    (CNN((8, 16), 10, dropout_hidden=0.5, convs_per_stage=3),
     {"stage1": (32, 32, 8), "stage2": (16, 16, 16), "penultimate": (16,)}),
    (ResNet((8, 16), 10, 2), {"stem": (32, 32, 8), "stage1": (32, 32, 8), "stage2": (16, 16, 16),
                              "penultimate": (16,)}),
])
def test_existing_models_taps(model, taps):
  shapes, logits, identical = traced(model, (2, 32, 32, 3))
  assert shapes == taps and logits == (2, 10) and identical


def final_dense(params):
  """The classifier's params: the highest-numbered Dense_k (the only Dense in the CIFAR family)."""
  return params[max((k for k in params if k.startswith("Dense_")), key=lambda k: int(k[6:]))]


@pytest.mark.parametrize("model,shape", [
    (models.CIFAR["resnet8"](10), (3, 16, 16, 3)),
    (models.CIFAR["wrn_16_1"](10), (3, 16, 16, 3)),
    (models.CIFAR["vgg8"](10), (3, 16, 16, 3)),
    (MLP((32, 16), 10), (3, 8, 8, 1)),
    (CNN((8, 16), 10, convs_per_stage=2), (3, 8, 8, 1)),
    (ResNet((8, 16), 10), (3, 8, 8, 1)),
])
def test_taps_do_not_change_the_logits(model, shape):
  x = images(1, shape)
  variables = init_numpy(model, shape)
  plain = jax.jit(model.apply)(variables, x)
  logits, cols = jax.jit(lambda v, x: model.apply(v, x, mutable=["taps"]))(variables, x)
  np.testing.assert_array_equal(logits, plain)
  # The classifier applied to the tapped penultimate vector reproduces the logits.
  dense = final_dense(variables["params"])
  penultimate = cols["taps"]["penultimate"][0]
  np.testing.assert_allclose(penultimate @ dense["kernel"] + dense["bias"], logits,
                             rtol=1e-5, atol=1e-5)


def test_training_taps_and_synced_batchnorm():
  """train=True records the taps and updates batch_stats (BN over the 'data' axis)."""
  model = models.CIFAR["resnet8"](10)
  x = images(2, (4, 8, 8, 3))
  variables = init_numpy(model, x.shape)
  train = jax.vmap(
      lambda xs: model.apply(variables, xs, train=True, mutable=["batch_stats", "taps"]),
      axis_name="data")
  logits, cols = jax.jit(train)(x.reshape(2, 2, 8, 8, 3))
  assert logits.shape == (2, 2, 10) and set(cols) == {"batch_stats", "taps"}
  assert cols["taps"]["stage3"][0].shape == (2, 2, 2, 2, 64)
  np.testing.assert_allclose(cols["batch_stats"]["BatchNorm_0"]["mean"][0],
                             cols["batch_stats"]["BatchNorm_0"]["mean"][1], rtol=1e-6)


# ----------------------------------------------------------------------------- layers, build

def test_conv_pads_like_pytorch():
  """A stride-2 3×3 conv pads 1 on every side (PyTorch), so output (i, j) is centred on input
  (2i, 2j); XLA's "SAME" would pad only after and centre on (2i+1, 2j+1)."""
  x = images(3, (1, 6, 6, 1))
  layer = common.conv(1, 3, 2)
  kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)  # picks the centre
  out = layer.apply({"params": {"kernel": kernel}}, x)
  np.testing.assert_array_equal(out, x[:, ::2, ::2])


def test_channel_shuffle_matches_pytorch_view_transpose():
  x = jnp.arange(6.0).reshape(1, 1, 1, 6)
  np.testing.assert_array_equal(common.channel_shuffle(x, 2)[0, 0, 0], [0, 3, 1, 4, 2, 5])
  np.testing.assert_array_equal(common.channel_shuffle(x, 3)[0, 0, 0], [0, 2, 4, 1, 3, 5])


def test_cnn_convs_per_stage():
  one = init_shapes(CNN((8, 16), 10), (1, 28, 28, 1))["params"]
  assert sorted(one) == ["Conv_0", "Conv_1", "Dense_0"]  # unchanged names: old checkpoints load
  three = init_shapes(CNN((8, 16), 10, convs_per_stage=3), (1, 28, 28, 1))["params"]
  assert sorted(three) == [f"Conv_{i}" for i in range(6)] + ["Dense_0"]
  extra = 2 * (9 * 8 * 8 + 8) + 2 * (9 * 16 * 16 + 16)
  assert count(three) - count(one) == extra


def model_config(**overrides):
  config = config_lib.model_defaults()
  config.update(overrides)
  return config


def test_build_every_name():
  assert models.NAMES[:4] == ("mlp", "cnn", "resnet", "decoder") and set(models.NAMES[4:]) == set(EXACT_100)
  for name in models.NAMES[4:]:
    model = models.build(model_config(name=name, num_classes=7, widths=(3,), blocks_per_stage=5))
    assert model == models.CIFAR[name](7)
  cnn = models.build(model_config(name="cnn", widths=(4,), blocks_per_stage=2))
  assert cnn.convs_per_stage == 2


def test_build_unknown_name_lists_the_choices():
  with pytest.raises(UserError, match="resnet32x4.*shufflenetv2"):
    models.build(model_config(name="resnet18"))
