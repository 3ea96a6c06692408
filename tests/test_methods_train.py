"""Every distillation method end to end through train_and_evaluate on the 8×8 digits: it trains,
the teacher's workdir stays byte-identical, adapters live in the train state but not in the
exported student, CRD resumes bit-exactly, 8 devices equal 1, and teacher ensembles, the clean
teacher view and mixup work.

One teacher (CNN (8, 16), 2 epochs) is trained per module; students are tiny (MLP (32,) or, where
a method needs feature maps, CNN (4, 8)) and run NUM_STEPS steps. Each run is made once and shared
by the tests that inspect it.
"""
import hashlib
import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research import config as config_lib
from research import losses, methods, models
from research.data import pipeline, sources
from research.errors import UserError
from research.train import checkpoint, optimizer, parallel
from research.train import step as step_lib
from research.train.loop import train_and_evaluate
from research.train.state import TrainState, init_variables
from tree_asserts import assert_trees_bitwise_equal, assert_trees_close

SHAPE = (8, 8, 1)
NUM_STEPS = 4
TEACHER_MODEL = dict(name="cnn", widths=(8, 16))
CNN_STUDENT = dict(name="cnn", widths=(4, 8))
MLP_STUDENT = dict(name="mlp", widths=(32,))

# name → (student model, method config). Feature-map methods (FitNets' default stage2 → stage2
# hint with a 1×1-conv regressor, AT) get the CNN student; the others the MLP.
METHODS = {
    "hinton_kd": (MLP_STUDENT, dict(ce_weight=0.5, kd_weight=0.5, temperature=4.0)),
    "fitnets": (CNN_STUDENT, dict(feature_weight=1.0)),
    "at": (CNN_STUDENT, dict(feature_weight=100.0)),
    "rkd": (MLP_STUDENT, dict(feature_weight=1.0)),
    "pkt": (MLP_STUDENT, dict(feature_weight=1.0)),
    "sp": (MLP_STUDENT, dict(feature_weight=1.0)),
    "crd": (MLP_STUDENT, dict(feature_weight=0.8, crd_negatives=64, crd_dim=16)),
    "dkd": (MLP_STUDENT, dict(feature_weight=1.0, temperature=4.0, dkd_warmup_steps=2)),
}


def _merge(base: dict, overrides: dict) -> dict:
  merged = dict(base)
  for key, value in overrides.items():
    nested = isinstance(value, dict) and isinstance(merged.get(key), dict)
    merged[key] = _merge(merged[key], value) if nested else value
  return merged


def _config(data_dir: str, **overrides) -> dict:
  """A tiny run on the 8×8 digits on one device, checkpointed halfway and at the end."""
  config = dict(dataset=dict(name="digits", data_dir=data_dir, download=False),
                batch_size=32, eval_batch_size=360, num_steps=NUM_STEPS, model=MLP_STUDENT,
                log_every_steps=1, checkpoint_every_steps=NUM_STEPS // 2, parallel=dict(num_devices=1))
  return _merge(config, overrides)


def _hashes(directory: pathlib.Path) -> dict:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _train_lines(workdir: pathlib.Path) -> list:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in lines if r["split"] == "train"]


def _item(workdir: pathlib.Path, step: int, name: str):
  """A checkpoint item as saved (numpy leaves), read without a target structure."""
  tree = ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / name)
  return jax.tree.map(np.asarray, tree)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, data_dir):
  """(workdir, file hashes) of a finished CNN teacher run."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  config = _config(data_dir, model=TEACHER_MODEL, num_steps=-1, num_epochs=2.0, optimizer=dict(lr=1e-2),
                   checkpoint_every_steps=1000, log_every_steps=50)
  results = train_and_evaluate(config, str(workdir))
  assert results["accuracy"] > 0.3, results  # well above chance (0.1): it has learned something
  return workdir, _hashes(workdir)


@pytest.fixture(scope="module")
def runs(teacher, tmp_path_factory, data_dir):
  """runs(name, num_devices=1, **overrides) -> (workdir, config, results) of a student run of
  method `name` (METHODS), trained once per distinct request."""
  cache = {}

  def run(name, num_devices=1, **overrides):
    key = (name, num_devices, json.dumps(overrides, sort_keys=True))
    if key not in cache:
      model, method = METHODS[name]
      config = _config(data_dir, model=model, method=dict(name=name, **method),
                       teacher=dict(checkpoint=str(teacher[0]), model=TEACHER_MODEL),
                       parallel=dict(num_devices=num_devices))
      config = _merge(config, overrides)
      workdir = tmp_path_factory.mktemp(f"{name}_{num_devices}") / "run"
      cache[key] = (workdir, config, train_and_evaluate(config, str(workdir)))
    return cache[key]

  return run


# ----------------------------------------------------------------------------- every method trains


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_trains_and_leaves_the_teacher_untouched(name, runs, teacher):
  workdir, _, results = runs(name)
  assert results["step"] == NUM_STEPS and math.isfinite(results["loss"])
  lines = _train_lines(workdir)
  assert [r["step"] for r in lines] == list(range(1, NUM_STEPS + 1))
  for line in lines:
    assert math.isfinite(line["loss"]) and 0 <= line["teacher_agreement"] <= 1
    if name != "hinton_kd":
      assert math.isfinite(line[f"loss_{name}"]), line
  if name == "dkd":  # warm-up: the DKD term is 0 at step 0 (logged as step 1), full from step 2
    assert lines[0]["loss_dkd"] == 0 and all(line["loss_dkd"] > 0 for line in lines[1:]), lines
  elif name != "hinton_kd":
    assert all(line[f"loss_{name}"] > 0 for line in lines), lines
  assert _hashes(teacher[0]) == teacher[1], "distillation modified the teacher's workdir"


def test_adapters_are_in_the_train_state_but_not_in_the_exported_student(runs):
  workdir, config, _ = runs("fitnets")
  train = _item(workdir, NUM_STEPS, "train")
  # The 1×1-conv regressor maps the student's stage2 (8 channels) onto the teacher's (16).
  assert train["adapters"]["regressor"]["kernel"].shape == (1, 1, 8, 16)
  assert train["adapters"]["regressor"]["bias"].shape == (16,)
  assert train["method_state"] == {}
  # It was trained: Adam has moments for it.
  assert np.any(train["opt_state"][0]["mu"]["adapters"]["regressor"]["kernel"] != 0)
  # The exported variables are exactly the student: it loads as a teacher would (extra
  # parameters would be refused), with no 'regressor' anywhere.
  exported = _item(workdir, NUM_STEPS, "variables")
  student = models.build(config_lib.resolve(config).model)
  assert jax.tree.map(np.shape, exported) == jax.tree.map(
      np.shape, jax.eval_shape(lambda: init_variables(student, SHAPE, jax.random.PRNGKey(0))))
  loaded = checkpoint.load_model_variables(str(workdir), student, SHAPE, "student")
  assert_trees_bitwise_equal(loaded, exported, "exported student")

  # CRD's heads and memory banks are train state too.
  workdir, config, _ = runs("crd")
  train = _item(workdir, NUM_STEPS, "train")
  assert set(train["adapters"]) == {"embed_student", "embed_teacher"}
  assert train["adapters"]["embed_student"]["kernel"].shape == (32, 16)      # MLP penultimate → 16
  assert train["adapters"]["embed_teacher"]["kernel"].shape == (16, 16)      # CNN penultimate → 16
  assert train["method_state"]["memory_student"].shape == (1437, 16)
  assert set(_item(workdir, NUM_STEPS, "variables")["params"]) == {"Dense_0", "Dense_1"}
  checkpoint.load_model_variables(str(workdir), models.build(config_lib.resolve(config).model), SHAPE)


# ----------------------------------------------------------------------------- resume


def test_crd_resumes_bit_exactly(runs, tmp_path):
  """The uninterrupted run checkpointed at NUM_STEPS/2 and NUM_STEPS. A copy cut back to its halfway
  checkpoint resumes from it and ends bitwise equal: params, adapters, memory banks, Z, optimizer
  state, RNG and data iterator."""
  full, config, results = runs("crd")
  half = NUM_STEPS // 2
  copy = tmp_path / "run"
  shutil.copytree(full, copy)
  shutil.rmtree(copy / "checkpoints" / str(NUM_STEPS))
  (copy / "results.json").unlink()
  before = _item(copy, half, "train")

  resumed = train_and_evaluate(config, str(copy))

  assert resumed == results
  # It resumed at step `half`: only the later steps were trained (and logged) again.
  steps = [r["step"] for r in _train_lines(copy)]
  assert steps == list(range(1, NUM_STEPS + 1)) + list(range(half + 1, NUM_STEPS + 1))
  assert _train_lines(copy)[NUM_STEPS:] == _train_lines(full)[half:]
  for name in ("train", "variables"):
    assert_trees_bitwise_equal(_item(copy, NUM_STEPS, name), _item(full, NUM_STEPS, name), name)
  data = lambda w: (w / "checkpoints" / str(NUM_STEPS) / "data" / "metadata").read_bytes()
  assert data(copy) == data(full)
  # The state that had to come back is not trivial: the banks moved after the halfway point and Z is set.
  after = _item(full, NUM_STEPS, "train")["method_state"]
  assert float(before["method_state"]["z_student"]) > 0 and float(before["method_state"]["z_teacher"]) > 0
  assert after["z_student"] == before["method_state"]["z_student"]
  assert not np.array_equal(after["memory_student"], before["method_state"]["memory_student"])


# ----------------------------------------------------------------------------- 8 devices == 1 device


@pytest.mark.parametrize("name", ["fitnets", "crd"])
def test_eight_devices_equal_one_device(name, runs):
  """Same config and global batches on 8 devices and on 1: params, adapters, optimizer state and
  CRD's banks and Z agree to float32 reordering (no dropout or BatchNorm in these models)."""
  one_dir, _, one = runs(name)
  eight_dir, _, eight = runs(name, num_devices=8)
  for item in ("variables", "train"):
    assert_trees_close(_item(eight_dir, NUM_STEPS, item), _item(one_dir, NUM_STEPS, item),
                       rtol=1e-5, atol=1e-6, what=item)
  one_lines, eight_lines = _train_lines(one_dir), _train_lines(eight_dir)
  assert len(eight_lines) == len(one_lines) == NUM_STEPS
  for a, b in zip(eight_lines, one_lines):
    assert set(a) == set(b)
    names = sorted(set(a) - {"split"})
    np.testing.assert_allclose([a[k] for k in names], [b[k] for k in names], rtol=1e-5, atol=1e-6,
                               err_msg=f"step {b['step']}: {names}")
  assert abs(eight["accuracy"] - one["accuracy"]) <= 1 / 360  # at most one near-tie flips


# ----------------------------------------------------------------------------- teachers


@pytest.fixture(scope="module")
def second_teacher(runs):
  """A second teacher of another architecture (MLP (32,)) for ensembles: any finished run is a
  teacher, so the PKT student's run serves. (workdir, file hashes)."""
  workdir, _, _ = runs("pkt")
  return workdir, _hashes(workdir)


def test_an_ensemble_of_teachers_trains(runs, teacher, second_teacher):
  ensemble_dir, _, results = runs("hinton_kd", teacher=dict(ensemble=(str(second_teacher[0]),)))
  single_dir, _, _ = runs("hinton_kd")
  assert results["step"] == NUM_STEPS and math.isfinite(results["loss"])
  # Same student init and first batch: the hard-label term agrees, the soft targets do not.
  first, single = _train_lines(ensemble_dir)[0], _train_lines(single_dir)[0]
  np.testing.assert_allclose(first["loss_ce"], single["loss_ce"], rtol=1e-6)
  assert abs(first["loss_kd"] - single["loss_kd"]) > 1e-4
  assert _hashes(teacher[0]) == teacher[1] and _hashes(second_teacher[0]) == second_teacher[1]


def test_ensemble_errors(teacher, second_teacher, data_dir, tmp_path):
  base = _config(data_dir, teacher=dict(checkpoint=str(teacher[0]), model=TEACHER_MODEL,
                                        ensemble=(str(second_teacher[0]),)))
  fitnets = _merge(base, dict(model=CNN_STUDENT, method=dict(name="fitnets", feature_weight=1.0)))
  with pytest.raises(UserError, match=r"ensemble.*only method 'hinton_kd'"):
    train_and_evaluate(fitnets, str(tmp_path / "fitnets"))
  missing = _merge(base, dict(method=dict(name="hinton_kd", kd_weight=1.0),
                              teacher=dict(ensemble=(str(second_teacher[0]), str(tmp_path / "nowhere")))))
  with pytest.raises(UserError, match=r"ensemble member .*nowhere has no config.json"):
    train_and_evaluate(missing, str(tmp_path / "missing"))
  assert not (tmp_path / "fitnets").exists() and not (tmp_path / "missing").exists()


def test_clean_teacher_view_batches(data_dir):
  """With translation and view='clean', batches carry the un-shifted images for the teacher."""
  clean = config_lib.build(_config(data_dir, dataset=dict(translate_px=1), teacher=dict(view="clean")))
  batch = pipeline.train_dataset(clean, 32, seed=0)[0]
  assert set(batch) == {"image", "label", "index", "teacher_image"}
  source = sources.ArraySource.from_tfds(sources.open_split("digits", "train", data_dir, download=False))
  originals = source.images[batch["index"]].astype(np.float32) / 255
  np.testing.assert_array_equal(batch["teacher_image"], originals)
  np.testing.assert_array_equal(batch["label"], source.labels[batch["index"]])
  shifted = 0
  for image, original in zip(batch["image"], batch["teacher_image"]):
    candidates = [pipeline.shift(original[None], 1, np.array([[dy], [dx]]))[0]
                  for dy in range(3) for dx in range(3)]
    assert any(np.array_equal(image, c) for c in candidates), "image is not a ±1 px shift of teacher_image"
    shifted += not np.array_equal(image, original)
  assert shifted > 16
  same = config_lib.build(_config(data_dir, dataset=dict(translate_px=1)))
  assert "teacher_image" not in pipeline.train_dataset(same, 32, seed=0)[0]


def test_one_step_with_mixup_and_a_clean_teacher_view():
  """One train step on a batch carrying 'teacher_image', with mixup: the student sees the mixed
  'image', the teacher the mixed 'teacher_image' (same ratio, same pairing), and CE is mixed between
  the labels and the partners' labels. The ratio is the documented draw Beta(mixup, mixup) from
  split(fold_in(rng, step))[0]; the logged terms are recomputed here by hand."""
  student, teacher = models.MLP((16,), 10), models.MLP((24,), 10)
  rng = np.random.default_rng(0)
  shapes = lambda model: jax.eval_shape(lambda: init_variables(model, SHAPE, jax.random.PRNGKey(0)))
  # Random variables drawn with numpy: no compiled init, which costs seconds.
  draw = lambda model: jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(s.dtype),
                                    shapes(model))
  s_vars, t_vars = draw(student), draw(teacher)
  method = methods.build(config_lib.build({"method": dict(name="hinton_kd", ce_weight=1.0, kd_weight=1.0,
                                                          temperature=2.0, mixup=1.0)}).method)
  tx = optimizer.build(config_lib.build({}).optimizer, 10)
  engine = parallel.ShardMapEngine(jax.devices()[:1])
  train_step = engine.compile_train(step_lib.make_train_step(student, (teacher,), method, tx))
  batch = {"image": rng.uniform(0, 1, (8,) + SHAPE).astype(np.float32),
           "teacher_image": rng.uniform(0, 1, (8,) + SHAPE).astype(np.float32),
           "label": rng.integers(0, 10, 8).astype(np.int32), "index": np.arange(8, dtype=np.int32)}
  base_rng = jax.random.PRNGKey(2)
  state = engine.put_replicated(jax.device_get(TrainState.create(s_vars, tx, base_rng)))
  _, metrics = train_step(state, engine.put_replicated((t_vars,)), engine.put_batch(batch))

  ratio = float(jax.random.beta(jax.random.split(jax.random.fold_in(base_rng, 0))[0], 1.0, 1.0))
  mix = lambda x: ratio * x + (1 - ratio) * np.roll(x, 1, axis=0)
  s_logits = student.apply(s_vars, mix(batch["image"]))
  kd = lambda t_images: 4.0 * jnp.mean(losses.kl_divergence(teacher.apply(t_vars, t_images), s_logits, 2.0))
  np.testing.assert_allclose(metrics["loss_kd"], kd(mix(batch["teacher_image"])), rtol=1e-5)
  assert abs(float(kd(mix(batch["image"]))) - float(metrics["loss_kd"])) > 1e-4  # not the student's view
  ce = lambda labels: jnp.mean(losses.cross_entropy(s_logits, labels))
  mixed_ce = ratio * ce(batch["label"]) + (1 - ratio) * ce(np.roll(batch["label"], 1))
  np.testing.assert_allclose(metrics["loss_ce"], mixed_ce, rtol=1e-5)
  assert 0.02 < ratio < 0.98  # a real mix for this seed


def test_clean_teacher_view_with_translation_and_mixup_trains(runs, teacher):
  workdir, _, results = runs("hinton_kd", dataset=dict(translate_px=1), teacher=dict(view="clean"),
                             method=dict(mixup=1.0))
  assert results["step"] == NUM_STEPS and math.isfinite(results["loss"])
  assert all(math.isfinite(r["loss"]) for r in _train_lines(workdir))
  assert _hashes(teacher[0]) == teacher[1]
