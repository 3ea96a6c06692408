"""Feature taps: what each model offers, and that the recorded features are the model's own
intermediate values (recomputed by hand from its params), while the logits stay untouched."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import methods, models
from research.errors import UserError
from research.methods import taps
from research.train.state import TrainState, init_variables

SHAPE = (8, 8, 1)  # digits


def _images(n=5, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(0, 1, (n,) + SHAPE), jnp.float32)


def _init(model, seed=0):
  """Random variables of `model`'s structure, drawn with numpy: no compiled init, so tests stay fast."""
  shapes = jax.eval_shape(lambda: init_variables(model, SHAPE, jax.random.PRNGKey(0)))
  rng = np.random.default_rng(seed)
  def draw(path, leaf):
    if jax.tree_util.keystr(path).endswith("['var']"):
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    return jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, shapes)


def _close(actual, expected):
  np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- available


def test_available_taps_of_the_mlp():
  model = models.MLP((16, 12), 10)
  shapes = taps.available(model, _init(model), SHAPE)
  assert {k: shapes[k] for k in ("hidden1", "hidden2", "penultimate", "logits")} == {
      "hidden1": (16,), "hidden2": (12,), "penultimate": (12,), "logits": (10,)}
  # Submodule outputs by path: the three Dense layers (and the dropouts, identity in inference).
  assert {k: shapes[k] for k in ("Dense_0", "Dense_1", "Dense_2")} == {
      "Dense_0": (16,), "Dense_1": (12,), "Dense_2": (10,)}
  assert shapes["Dropout_0"] == (64,)  # the flattened 8×8 input
  assert taps.stage_taps(shapes) == []


def test_available_taps_of_the_cnn():
  model = models.CNN((4, 8), 10)
  shapes = taps.available(model, _init(model), SHAPE)
  assert shapes == {"stage1": (8, 8, 4), "stage2": (4, 4, 8), "penultimate": (8,),
                    "Conv_0": (8, 8, 4), "Conv_1": (4, 4, 8), "Dense_0": (10,), "Dropout_0": (8,),
                    "logits": (10,)}
  assert taps.stage_taps(shapes) == ["stage1", "stage2"]


def test_available_taps_of_the_resnet():
  model = models.ResNet((4, 8), 10)
  shapes = taps.available(model, _init(model), SHAPE)
  assert {k: shapes[k] for k in ("stem", "stage1", "stage2", "penultimate", "logits")} == {
      "stem": (8, 8, 4), "stage1": (8, 8, 4), "stage2": (4, 4, 8), "penultimate": (8,), "logits": (10,)}
  # Nested submodules by path; the second block (stride 2, 4 → 8 channels) has a projection shortcut.
  assert shapes["ResidualBlock_0"] == (8, 8, 4)
  assert shapes["ResidualBlock_0/Conv_1"] == (8, 8, 4)
  assert shapes["ResidualBlock_1/Conv_0"] == (4, 4, 8)
  assert shapes["ResidualBlock_1/Conv_2"] == (4, 4, 8)  # the 1×1 projection
  assert "ResidualBlock_0/Conv_2" not in shapes       # identity shortcut: no projection
  assert taps.stage_taps({"stage10": (1,), "stage2": (1,), "stage1": (1,), "stem": (1,)}) == [
      "stage1", "stage2", "stage10"]


# ----------------------------------------------------------------------------- forward


def test_cnn_taps_equal_a_manual_forward_pass():
  """stage1 = relu(conv0(x)), Conv_0 = conv0(x) (before the ReLU), stage2 = relu(conv1(pool(stage1))),
  penultimate = mean over positions of pool(stage2), and penultimate · W + b = logits."""
  model = models.CNN((4, 8), 10)
  variables = _init(model)
  params = variables["params"]
  x = _images()
  features, collections = taps.forward(model, variables, x, ("stage1", "stage2", "penultimate", "Conv_0",
                                                              "Conv_1"))
  assert set(features) == {"logits", "stage1", "stage2", "penultimate", "Conv_0", "Conv_1"}
  assert collections == {}

  conv = lambda name, width, inputs: nn.Conv(width, (3, 3)).apply({"params": params[name]}, inputs)
  pool = lambda y: nn.max_pool(y, (2, 2), strides=(2, 2), padding="SAME")
  conv0 = conv("Conv_0", 4, x)
  stage1 = jax.nn.relu(conv0)
  conv1 = conv("Conv_1", 8, pool(stage1))
  stage2 = jax.nn.relu(conv1)
  penultimate = jnp.mean(pool(stage2), axis=(1, 2))
  _close(features["Conv_0"], conv0)
  assert np.any(np.asarray(conv0) < 0), "Conv_0 is the pre-activation output, negative values included"
  _close(features["stage1"], stage1)
  _close(features["Conv_1"], conv1)
  _close(features["stage2"], stage2)
  _close(features["penultimate"], penultimate)
  # float64 reference of the last layer: the penultimate tap fed through the Dense gives the logits.
  dense = params["Dense_0"]
  logits = (np.asarray(features["penultimate"], np.float64) @ np.asarray(dense["kernel"], np.float64)
            + np.asarray(dense["bias"], np.float64))
  np.testing.assert_allclose(features["logits"], logits, rtol=1e-5, atol=1e-6)


def test_mlp_taps_equal_a_manual_forward_pass():
  model = models.MLP((16, 12), 10)
  params = _init(model)["params"]
  x = _images()
  features, _ = taps.forward(model, {"params": params}, x, ("hidden1", "hidden2", "penultimate", "Dense_1"))
  p = lambda name: tuple(np.asarray(params[name][k], np.float64) for k in ("kernel", "bias"))
  flat = np.asarray(x, np.float64).reshape(len(x), -1)
  (w0, b0), (w1, b1), (w2, b2) = p("Dense_0"), p("Dense_1"), p("Dense_2")
  hidden1 = np.maximum(flat @ w0 + b0, 0)
  dense1 = hidden1 @ w1 + b1
  hidden2 = np.maximum(dense1, 0)
  for name, expected in (("hidden1", hidden1), ("Dense_1", dense1), ("hidden2", hidden2),
                         ("penultimate", hidden2), ("logits", hidden2 @ w2 + b2)):
    np.testing.assert_allclose(features[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_resnet_nested_module_tap_and_batch_stats_in_training():
  """A nested path tap is that conv applied to its block's input; in training, the updated
  batch_stats come back and the recording collections do not."""
  model = models.ResNet((4, 8), 10)
  variables = _init(model)
  x = _images(4)
  features, collections = taps.forward(model, variables, x, ("stem", "ResidualBlock_0/Conv_0", "penultimate"))
  conv = nn.Conv(4, (3, 3), use_bias=False).apply(
      {"params": variables["params"]["ResidualBlock_0"]["Conv_0"]}, features["stem"])
  _close(features["ResidualBlock_0/Conv_0"], conv)  # stage 1's first block takes the stem's output
  dense = variables["params"]["Dense_0"]
  _close(features["penultimate"] @ dense["kernel"] + dense["bias"], features["logits"])
  assert collections == {}

  def train_forward(v, images):  # BatchNorm averages over 'data' in training: give it the axis
    return taps.forward(model, v, images, ("stage2",), mutable=("batch_stats",), train=True)

  features, collections = jax.vmap(train_forward, (None, 0), axis_name="data")(variables, x[None])
  assert set(collections) == {"batch_stats"}
  assert features["stage2"].shape == (1, 4, 4, 4, 8)
  moved = jax.tree.map(lambda new, old: not np.allclose(new[0], old), collections["batch_stats"],
                       variables["batch_stats"])
  assert all(jax.tree.leaves(moved))


@pytest.mark.parametrize("model,names", [
    (models.MLP((16, 12), 10, dropout_hidden=0.5), ("hidden1", "penultimate", "Dense_1")),
    (models.CNN((4, 8), 10), ("stage1", "stage2", "penultimate", "Conv_1", "Dense_0")),
    (models.ResNet((4, 8), 10), ("stem", "stage1", "ResidualBlock_1/Conv_2", "penultimate")),
], ids=["mlp", "cnn", "resnet"])
def test_logits_do_not_depend_on_the_taps_asked_for(model, names):
  """Recording features changes nothing in the computation: bitwise the same logits, in inference
  and (with the same dropout key) in training; without taps nothing is recorded."""
  variables = _init(model)
  x = _images()
  plain = model.apply(variables, x, train=False)
  none, none_collections = taps.forward(model, variables, x)
  some, _ = taps.forward(model, variables, x, names)
  assert set(none) == {"logits"} and none_collections == {}
  assert set(some) == set(names) | {"logits"}
  np.testing.assert_array_equal(none["logits"], plain)
  np.testing.assert_array_equal(some["logits"], plain)
  if isinstance(model, models.MLP):  # dropout: the same key gives the same masks with or without taps
    rngs = {"dropout": jax.random.PRNGKey(3)}
    trained = model.apply(variables, x, train=True, rngs=rngs)
    with_taps, _ = taps.forward(model, variables, x, names, train=True, rngs=rngs)
    np.testing.assert_array_equal(with_taps["logits"], trained)
    assert not np.array_equal(trained, plain)


def test_unknown_tap_is_a_user_error_listing_the_available_taps():
  student, teacher = models.CNN((4, 8), 10), models.CNN((8, 16), 10)
  s_shapes = taps.available(student, _init(student), SHAPE)
  t_shapes = taps.available(teacher, _init(teacher), SHAPE)
  config = config_lib.build({"method": dict(name="fitnets", feature_weight=1.0, student_taps=("stage3",),
                                            teacher_taps=("stage2",))}).method
  with pytest.raises(UserError, match=r"student has no feature tap 'stage3'") as error:
    methods.build(config, s_shapes, t_shapes, num_train=100)
  message = str(error.value)
  for name in ("stage1", "stage2", "penultimate", "logits", "Conv_0", "student_taps"):
    assert name in message, f"{name} missing from: {message}"
  config = config_lib.build({"method": dict(name="rkd", feature_weight=1.0,
                                            teacher_taps=("ResidualBlock_0/Conv_1",))}).method
  with pytest.raises(UserError, match=r"teacher has no feature tap 'ResidualBlock_0/Conv_1'.*teacher_taps"):
    methods.build(config, s_shapes, t_shapes, num_train=100)
  # A submodule path the model does have is accepted.
  config = config_lib.build({"method": dict(name="rkd", feature_weight=1.0, student_taps=("Conv_1",),
                                            teacher_taps=("Conv_1",))}).method
  assert methods.build(config, s_shapes, t_shapes, num_train=100).student_taps == ("Conv_1",)


@pytest.mark.parametrize("model,collections", [
    (models.MLP((16,), 10), {"params"}),
    (models.CNN((4, 8), 10), {"params"}),
    (models.ResNet((4, 8), 10), {"params", "batch_stats"}),
], ids=["mlp", "cnn", "resnet"])
def test_init_variables_keep_no_recorded_features(model, collections):
  """Only real state is initialised (no 'taps' / 'intermediates'), so checkpoints and the train
  state hold exactly the model's collections."""
  variables = jax.eval_shape(lambda: init_variables(model, SHAPE, jax.random.PRNGKey(0)))
  assert set(variables) == collections
  state = jax.eval_shape(lambda: TrainState.create(init_variables(model, SHAPE, jax.random.PRNGKey(0)),
                                                   optax.sgd(0.1), jax.random.PRNGKey(1)))
  assert set(state.variables) == collections


class _SowsDuringInit(nn.Module):
  """A third-party-style model that records features unconditionally (also during init)."""

  @nn.compact
  def __call__(self, x, train=False):
    self.sow("taps", "raw", x)
    return nn.Dense(3)(x.reshape((x.shape[0], -1)))


def test_init_variables_drop_features_recorded_during_init():
  model = _SowsDuringInit()
  raw = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + SHAPE)))
  assert set(raw) == {"params", "taps"}
  variables = jax.eval_shape(lambda: init_variables(model, SHAPE, jax.random.PRNGKey(0)))
  assert set(variables) == {"params"}
  # The sown name is a tap like any other.
  features, _ = taps.forward(model, {"params": _init(model)["params"]}, _images(2), ("raw",))
  np.testing.assert_array_equal(features["raw"], _images(2))
