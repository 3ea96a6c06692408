"""Data parallelism changes nothing but speed: N devices compute what one device computes.

The same global batch is stepped on 8 simulated CPU devices and on 1, through the shard_map
engine and the pmap wrapper, and the resulting params, optimizer state and metrics are compared.

Tolerance: float32 has eps ≈ 1.2e-7. Splitting the batch over 8 devices only reorders the sums
behind the gradient mean, the batch statistics and the metric means (8 partial sums, then a psum),
which moves results by a few ulps of the largest summands. The values compared are O(1e-4..1),
so |a − b| ≤ 1e-6 + 1e-6·|b| absorbs reordering, while a real bug (gradients summed instead of
averaged, a device's examples dropped or counted twice, unsynchronised BatchNorm statistics)
moves them by 1e-3 or more. Models here have no dropout: dropout masks legitimately depend on
the device index (fold_in(rng, axis_index)), so a dropout model is not expected to match.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research import losses, methods, models
from research.data import pipeline, sources
from research.errors import UserError
from research.train import loop, optimizer, parallel
from research.train import step as step_lib
from research.train.state import TrainState, init_variables
from tree_asserts import assert_trees_close

IMAGE_SHAPE = (8, 8, 1)  # digits
BATCH = 64               # global batch: 8 examples per device on 8 devices
RTOL = ATOL = 1e-6


def _config(data_dir: str):
  return config_lib.build({"dataset": {"name": "digits", "data_dir": data_dir}})


@pytest.fixture(scope="module")
def batches(data_dir):
  """Five real training batches of digits (the pipeline's batches 0..4)."""
  dataset = pipeline.train_dataset(_config(data_dir), BATCH, seed=0)
  return [dataset[k] for k in range(5)]


@pytest.fixture(scope="module")
def tx(data_dir):
  return optimizer.build(_config(data_dir).optimizer, total_steps=100)


def _host_state(model, tx, seed=0):
  variables = init_variables(model, IMAGE_SHAPE, jax.random.PRNGKey(seed))
  return jax.device_get(TrainState.create(variables, tx, jax.random.PRNGKey(seed + 100)))


def _run(engine, student, teacher, teacher_variables, method, tx, host_state, batches):
  """Steps `host_state` over `batches` on `engine`; returns the state after every step and every
  step's metrics, on the host."""
  teachers = () if teacher is None else (teacher,)
  train_step = engine.compile_train(step_lib.make_train_step(student, teachers, method, tx))
  # put_replicated may alias host buffers and the step donates its state: give it a private copy.
  state = engine.put_replicated(jax.tree.map(np.array, host_state))
  teacher_variables = () if teacher is None else engine.put_replicated((teacher_variables,))
  states, history = [], []
  for batch in batches:
    state, metrics = train_step(state, teacher_variables, engine.put_batch(batch))
    states.append(jax.tree.map(np.array, jax.device_get(engine.unreplicate(state))))
    history.append(jax.tree.map(np.array, jax.device_get(engine.unreplicate(metrics))))
  return states, history


def _method(**method):
  return methods.build(config_lib.build({"method": method}).method)


def _assert_trees_close(actual, expected, rtol=RTOL, atol=ATOL, what=""):
  assert_trees_close(actual, expected, rtol, atol, what)


def _student():
  return models.MLP((32, 32), 10)  # no dropout: see the module docstring


def _teacher():
  """A teacher of another architecture with params from another seed."""
  teacher = models.MLP((64,), 10)
  return teacher, jax.device_get(init_variables(teacher, IMAGE_SHAPE, jax.random.PRNGKey(7)))


NUM_STEPS = 5


@pytest.fixture(scope="module")
def mlp_runs(batches, tx):
  """runs(engine_name, kd) -> (host_state, states, metrics) of NUM_STEPS steps, each run computed once."""
  engines = {"shard_map_1": lambda: parallel.ShardMapEngine(jax.devices()[:1]),
             "shard_map_8": lambda: parallel.ShardMapEngine(jax.devices()[:8]),
             "pmap_8": lambda: parallel.PmapEngine(jax.devices()[:8])}
  student = _student()
  host = _host_state(student, tx)
  cache = {}

  def runs(engine_name, kd):
    if (engine_name, kd) not in cache:
      teacher, teacher_variables = _teacher() if kd else (None, None)
      method = _method(name="hinton_kd", temperature=4.0, ce_weight=0.3, kd_weight=0.7) if kd else _method()
      cache[engine_name, kd] = (host, *_run(engines[engine_name](), student, teacher, teacher_variables,
                                            method, tx, host, batches[:NUM_STEPS]))
    return cache[engine_name, kd]

  return runs


def test_one_device_step_matches_plain_jax(mlp_runs, batches, tx):
  """The 1-device engine step is ordinary gradient descent: a reference written without collectives."""
  host, states, history = mlp_runs("shard_map_1", False)
  student, batch = _student(), batches[0]

  def loss_fn(params):
    logits = student.apply({"params": params}, batch["image"])
    return jnp.mean(losses.cross_entropy(logits, batch["label"])), logits

  (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(host.variables["params"])
  updates, opt_state = tx.update({"student": grads, "adapters": {}}, host.opt_state, host.trainable())
  params = jax.tree.map(lambda p, u: p + u, host.variables["params"], updates["student"])
  _assert_trees_close(states[0].variables["params"], jax.device_get(params), what="params")
  _assert_trees_close(states[0].opt_state, jax.device_get(opt_state), what="opt_state")
  assert int(states[0].step) == 1
  np.testing.assert_allclose(history[0]["loss"], loss, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(history[0]["accuracy"], np.mean(np.argmax(logits, -1) == batch["label"]))


@pytest.mark.parametrize("kd", [False, True], ids=["supervised", "hinton_kd"])
def test_eight_devices_equal_one_device(mlp_runs, kd):
  """Params, optimizer state and metrics of 8-device steps equal 1-device steps on the same
  global batches, after the first step and after NUM_STEPS consecutive steps."""
  host, one_states, one_metrics = mlp_runs("shard_map_1", kd)
  _, eight_states, eight_metrics = mlp_runs("shard_map_8", kd)
  if kd:
    assert set(eight_metrics[0]) == {"loss", "accuracy", "teacher_agreement", "loss_ce", "loss_kd"}
  for step in (1, NUM_STEPS):
    one, eight = one_states[step - 1], eight_states[step - 1]
    assert int(eight.step) == step
    # The state must have moved, or equality would prove little.
    assert not np.allclose(eight.variables["params"]["Dense_0"]["kernel"],
                           host.variables["params"]["Dense_0"]["kernel"])
    # opt_state first: Adam's moments show a gradient-scale error (e.g. a sum instead of a mean
    # over devices) directly, while Adam's update hides most of it from the params.
    _assert_trees_close(eight.opt_state, one.opt_state, what=f"step {step}: opt_state")
    _assert_trees_close(eight.variables, one.variables, what=f"step {step}: variables")
    np.testing.assert_array_equal(eight.rng, one.rng)
    _assert_trees_close(eight_metrics[step - 1], one_metrics[step - 1], what=f"step {step}: metrics")


@pytest.mark.parametrize("kd", [False, True], ids=["supervised", "hinton_kd"])
def test_pmap_equals_shard_map(mlp_runs, kd):
  """The pmap wrapper runs the same per-device step as shard_map: same results on 8 devices."""
  _, shard_states, shard_metrics = mlp_runs("shard_map_8", kd)
  _, pmap_states, pmap_metrics = mlp_runs("pmap_8", kd)
  _assert_trees_close(pmap_states, shard_states, what="states")
  _assert_trees_close(pmap_metrics, shard_metrics, what="metrics")


def test_resnet_batchnorm_step_eight_devices_equal_one_device(batches, tx):
  """BatchNorm statistics are averaged over 'data': 8 devices normalise as 1 device on the whole batch."""
  student = models.ResNet((8, 16), 10)
  host = _host_state(student, tx)
  assert "batch_stats" in host.variables
  args = (student, None, None, _method(), tx, host, batches[:1])
  (one_state,), one_metrics = _run(parallel.ShardMapEngine(jax.devices()[:1]), *args)
  (eight_state,), eight_metrics = _run(parallel.ShardMapEngine(jax.devices()[:8]), *args)
  # Running statistics moved away from their initial values (mean 0, var 1) ...
  moved = jax.tree.map(lambda a, b: not np.allclose(a, b), one_state.variables["batch_stats"],
                       host.variables["batch_stats"])
  assert all(jax.tree.leaves(moved))
  # ... identically on 8 devices: per-device statistics of 8 examples would differ.
  _assert_trees_close(eight_state.variables["batch_stats"], one_state.variables["batch_stats"],
                      rtol=1e-5, atol=1e-5, what="batch_stats")
  _assert_trees_close(eight_state.variables["params"], one_state.variables["params"],
                      rtol=1e-5, atol=1e-5, what="params")
  _assert_trees_close(eight_state.opt_state, one_state.opt_state, rtol=1e-5, atol=1e-5, what="opt_state")
  _assert_trees_close(eight_metrics, one_metrics, rtol=1e-5, atol=1e-5, what="metrics")


@pytest.mark.parametrize("engine_class", [parallel.ShardMapEngine, parallel.PmapEngine])
def test_eval_counts_are_exact_sums_over_devices(data_dir, engine_class):
  """correct / loss / count summed over 8 devices and padded batches equal a numpy computation."""
  dataset_config = _config(data_dir).dataset
  model = models.MLP((32,), 10)
  variables = jax.device_get(init_variables(model, IMAGE_SHAPE, jax.random.PRNGKey(3)))
  engine = engine_class(jax.devices()[:8])
  eval_step = engine.compile_eval(step_lib.make_eval_step(model))
  # 360 test examples in batches of 64: the last batch has 40 real examples and 24 padding.
  batch_size = 64
  source = sources.ArraySource.from_tfds(sources.open_split("digits", "test", data_dir, download=False))
  images = source.images.astype(np.float32) / 255.0
  labels = source.labels
  assert len(labels) % batch_size
  logits = np.asarray(model.apply(variables, images), np.float64)
  correct = np.argmax(logits, -1) == labels
  log_probs = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1,
                                     keepdims=True)) - logits.max(-1, keepdims=True)
  nll = -log_probs[np.arange(len(labels)), labels]
  assert 0 < correct.sum() < len(labels)

  replicated = engine.put_replicated(variables)
  for i, batch in enumerate(pipeline.eval_batches(dataset_config, "test", batch_size)):
    sums = jax.device_get(eval_step(replicated, engine.put_batch(batch)))
    real = slice(i * batch_size, min((i + 1) * batch_size, len(labels)))
    assert float(sums["count"]) == real.stop - real.start
    assert float(sums["correct"]) == correct[real].sum()
    np.testing.assert_allclose(sums["loss"], nll[real].sum(), rtol=1e-5)

  totals = loop.evaluate(engine, eval_step, replicated, dataset_config, "test", batch_size)
  assert totals["count"] == len(labels)
  assert totals["errors"] == len(labels) - correct.sum()
  assert totals["accuracy"] == correct.sum() / len(labels)
  np.testing.assert_allclose(totals["loss"], nll.mean(), rtol=1e-5)


def test_check_batch_size_rejects_indivisible_batches():
  with pytest.raises(UserError, match=r"batch_size=100 .*8 devices"):
    parallel.check_batch_size(100, 8)
  with pytest.raises(UserError, match=r"eval_batch_size=1001"):
    parallel.check_batch_size(1001, 8, "eval_batch_size")
  parallel.check_batch_size(96, 8)  # divisible: no error
  parallel.check_batch_size(7, 1)
