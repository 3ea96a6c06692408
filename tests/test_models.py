"""Model zoo: output shapes, hand-counted parameter numbers, dropout and BatchNorm behaviour."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research import models
from research.errors import UserError
from research.models.cnn import CNN, ResNet
from research.models.mlp import MLP


def model_config(**overrides):
  config = config_lib.model_defaults()
  config.update(overrides)
  return config


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def init_shapes(model, shape):
  """Variable shapes without computing anything (eval_shape)."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))


def init_numpy(model, shape, seed=0):
  """Variables of `model.init`'s structure filled from numpy: BN mean 0 / var 1 / scale 1, other
  leaves N(0, 0.3²). Skips compiling JAX's random initialisers (seconds per shape on CPU), which
  these tests do not exercise."""
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name in ("mean", "bias"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    if name in ("var", "scale"):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, init_shapes(model, shape))


def images(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def dense(n_in, n_out):
  return n_in * n_out + n_out


def conv(k, c_in, c_out, bias=True):
  return k * k * c_in * c_out + (c_out if bias else 0)


# ----------------------------------------------------------------------------- build

@pytest.mark.parametrize("name,cls", [("mlp", MLP), ("cnn", CNN), ("resnet", ResNet)])
def test_build_returns_named_architecture(name, cls):
  model = models.build(model_config(name=name, widths=[8, 16], num_classes=7, dropout_hidden=0.3))
  assert type(model) is cls
  assert tuple(model.widths) == (8, 16) and model.num_classes == 7


def test_build_passes_hyper_parameters():
  mlp = models.build(model_config(name="mlp", widths=(5,), dropout_input=0.2, dropout_hidden=0.5))
  assert (mlp.dropout_input, mlp.dropout_hidden) == (0.2, 0.5)
  cnn = models.build(model_config(name="cnn", widths=(5,), dropout_hidden=0.3))
  assert cnn.dropout_hidden == 0.3
  resnet = models.build(model_config(name="resnet", widths=(4,), blocks_per_stage=3))
  assert resnet.blocks_per_stage == 3


def test_build_rejects_unknown_name():
  with pytest.raises(UserError, match="transformer"):
    models.build(model_config(name="transformer"))


# ----------------------------------------------------------------------------- MLP

@pytest.mark.parametrize("widths,expected", [
    ((800, 800), dense(784, 800) + dense(800, 800) + dense(800, 10)),
    ((1200, 1200), dense(784, 1200) + dense(1200, 1200) + dense(1200, 10)),
    ((), dense(784, 10)),
])
def test_mlp_parameter_count(widths, expected):
  variables = init_shapes(MLP(widths, 10), (1, 28, 28, 1))
  assert set(variables) == {"params"}
  assert count(variables["params"]) == expected


def test_mlp_student_and_teacher_counts_by_hand():
  assert count(init_shapes(MLP((800, 800), 10), (1, 28, 28, 1))) == 1_276_810
  assert count(init_shapes(MLP((1200, 1200), 10), (1, 28, 28, 1))) == 2_395_210


def test_mlp_output_shape_and_flatten():
  model = MLP((32, 16), 10)
  x = images(1, (5, 28, 28, 1))
  variables = jax.jit(model.init)(jax.random.key(0), x)  # the real initialiser, once
  out = model.apply(variables, x)
  assert out.shape == (5, 10) and out.dtype == jnp.float32
  # Flattening is row-major over (H, W, C): the first kernel has 784 input rows.
  kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
  assert kernel.shape == (784, 32)
  # He initialisation of the hidden layers: std sqrt(2 / fan_in).
  np.testing.assert_allclose(kernel.std(), np.sqrt(2 / 784), rtol=0.05)
  # Examples are independent (no cross-batch mixing): one example alone gives the same logits.
  np.testing.assert_allclose(model.apply(variables, x[2:3]), out[2:3], rtol=1e-5, atol=1e-6)


def test_mlp_dropout_only_in_training():
  x = images(1, (16, 28, 28, 1))
  model = MLP((64, 64), 10, dropout_input=0.2, dropout_hidden=0.5)
  variables = init_numpy(model, x.shape)
  plain = MLP((64, 64), 10).apply(variables, x)  # same weights, no dropout layers active
  np.testing.assert_array_equal(model.apply(variables, x), plain)
  np.testing.assert_array_equal(model.apply(variables, x, train=False), plain)
  train_a = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  train_a2 = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  train_b = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(3)})
  np.testing.assert_array_equal(train_a, train_a2)
  assert np.abs(np.asarray(train_a) - np.asarray(plain)).max() > 1e-3
  assert np.abs(np.asarray(train_a) - np.asarray(train_b)).max() > 1e-3


def test_mlp_without_dropout_is_deterministic_in_training():
  x = images(1, (4, 28, 28, 1))
  model = MLP((32,), 10)
  variables = init_numpy(model, x.shape)
  np.testing.assert_array_equal(model.apply(variables, x, train=True), model.apply(variables, x))


def test_mlp_dropout_in_training_needs_an_rng():
  x = jnp.ones((2, 28, 28, 1))
  model = MLP((8,), 10, dropout_hidden=0.5)
  variables = init_numpy(model, x.shape)
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, x, train=True)


def test_mlp_input_dropout_rate_and_scaling():
  """With no hidden layers and an identity output layer, the logits are the dropped-out input:
  a fraction 0.2 is zeroed and the rest scaled by 1/(1 − 0.2)."""
  model = MLP((), 100, dropout_input=0.2)
  x = jnp.ones((1000, 10, 10, 1))
  params = {"params": {"Dense_0": {"kernel": jnp.eye(100), "bias": jnp.zeros(100)}}}
  out = np.asarray(model.apply(params, x, train=True, rngs={"dropout": jax.random.key(4)}))
  zero = out == 0
  assert abs(zero.mean() - 0.2) < 0.01, zero.mean()
  np.testing.assert_allclose(out[~zero], 1 / 0.8, rtol=1e-6)


# ----------------------------------------------------------------------------- CNN

def test_cnn_shapes_and_parameter_count():
  model = CNN((16, 32), 10)
  variables = init_shapes(model, (1, 28, 28, 1))
  expected = conv(3, 1, 16) + conv(3, 16, 32) + dense(32, 10)
  assert count(variables["params"]) == expected
  x = images(1, (3, 28, 28, 1))
  real = init_numpy(model, x.shape)
  assert model.apply(real, x).shape == (3, 10)
  # Global average pooling: the same weights accept another input size (32×32×1, digits 8×8×1).
  assert model.apply(real, jnp.zeros((2, 32, 32, 1))).shape == (2, 10)
  assert model.apply(real, jnp.zeros((2, 8, 8, 1))).shape == (2, 10)


def test_cnn_dropout_only_in_training():
  x = images(1, (8, 28, 28, 1))
  model = CNN((8,), 10, dropout_hidden=0.5)
  variables = init_numpy(model, x.shape)
  np.testing.assert_array_equal(model.apply(variables, x), CNN((8,), 10).apply(variables, x))
  train = model.apply(variables, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert np.abs(np.asarray(train) - np.asarray(model.apply(variables, x))).max() > 1e-4
  with pytest.raises(flax.errors.InvalidRngError):
    model.apply(variables, x, train=True)


# ----------------------------------------------------------------------------- ResNet

def bn(c):
  return 2 * c  # scale + bias (and, separately, mean + var in batch_stats)


def test_resnet_parameter_count_by_hand():
  widths = (8, 16)
  variables = init_shapes(ResNet(widths, 10, blocks_per_stage=1), (1, 28, 28, 1))
  stem = conv(3, 1, 8, bias=False) + bn(8)
  block0 = conv(3, 8, 8, False) + bn(8) + conv(3, 8, 8, False) + bn(8)            # identity shortcut
  block1 = (conv(3, 8, 16, False) + bn(16) + conv(3, 16, 16, False) + bn(16)
            + conv(1, 8, 16, False) + bn(16))                                     # projection shortcut
  assert count(variables["params"]) == stem + block0 + block1 + dense(16, 10)
  bn_channels = 8 + 8 + 8 + 16 + 16 + 16
  assert count(variables["batch_stats"]) == 2 * bn_channels


def test_resnet_blocks_per_stage():
  one = count(init_shapes(ResNet((8, 16), 10, 1), (1, 28, 28, 1))["params"])
  two = count(init_shapes(ResNet((8, 16), 10, 2), (1, 28, 28, 1))["params"])
  # The extra block of each stage is an identity block of that width: 2 convs + 2 BNs.
  extra = sum(2 * conv(3, c, c, False) + 2 * bn(c) for c in (8, 16))
  assert two - one == extra


def test_resnet_eval_shape_and_downsampling():
  model = ResNet((8, 16, 32), 10)
  x = images(1, (2, 32, 32, 1))
  variables = init_numpy(model, x.shape)
  assert model.apply(variables, x).shape == (2, 10)
  _, state = model.apply(variables, x, capture_intermediates=True, mutable=["intermediates"])
  spatial = [state["intermediates"][f"ResidualBlock_{i}"]["__call__"][0].shape[1:3] for i in range(3)]
  assert spatial == [(32, 32), (16, 16), (8, 8)]


def test_resnet_sync_batchnorm_matches_whole_batch():
  """Training BN averages statistics over the 'data' axis: 2 shards of 4 = 1 shard of 8."""
  model = ResNet((4, 8), 10)
  x = images(1, (8, 12, 12, 1))
  variables = init_numpy(model, x.shape)

  @jax.jit
  def train_apply(shards):
    return jax.vmap(lambda xs: model.apply(variables, xs, train=True, mutable=["batch_stats"]),
                    axis_name="data")(shards)

  out_whole, stats_whole = train_apply(x[None])
  out_split, stats_split = train_apply(x.reshape(2, 4, 12, 12, 1))
  np.testing.assert_allclose(out_split.reshape(8, 10), out_whole[0], rtol=1e-4, atol=1e-5)
  for whole, split in zip(jax.tree_util.tree_leaves(stats_whole), jax.tree_util.tree_leaves(stats_split)):
    np.testing.assert_allclose(split[0], whole[0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(split[1], whole[0], rtol=1e-4, atol=1e-6)
  # Training moved the running statistics away from their initial values (mean 0, var 1).
  moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(
      jax.tree_util.tree_leaves(stats_whole["batch_stats"]),
      jax.tree_util.tree_leaves(variables["batch_stats"]))]
  assert min(moved) > 0
  # ...and normalising the first shard alone (its own statistics) gives different logits, so the
  # agreement above is the synchronisation, not an accident of the data.
  out_alone, _ = train_apply(x[None, :4])
  assert np.abs(np.asarray(out_alone[0]) - np.asarray(out_split[0])).max() > 1e-3
