"""Checkpoints and resumption: a killed run resumes bit-exactly, a finished run is not retrained,
a teacher is only ever read, and a workdir refuses a different config.
"""
import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from research import config as config_lib
from research import models
from research.data import pipeline
from research.errors import UserError
from research.train import checkpoint, optimizer
from research.train.loop import train_and_evaluate
from research.train.state import TrainState, init_variables
from tree_asserts import assert_trees_bitwise_equal

REPO = pathlib.Path(__file__).resolve().parents[1]


def _digits_config(data_dir: str, **overrides) -> dict:
  """A tiny supervised run on the 8×8 digits: seconds, on one device."""
  config = dict(
      dataset=dict(name="digits", data_dir=data_dir, download=False),
      batch_size=32, eval_batch_size=120, num_steps=20,
      model=dict(name="mlp", widths=(32,)),
      checkpoint_every_steps=10, log_every_steps=5,
      parallel=dict(num_devices=1),
  )
  for key, value in overrides.items():
    config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
  return config


def _hashes(directory: pathlib.Path) -> dict:
  """sha256 of every file under `directory`, by relative path."""
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


def _steps(workdir: pathlib.Path) -> list:
  """Finalised checkpoint steps (Orbax writes '<step>.orbax-checkpoint-tmp*' folders, then renames)."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _metric_lines(workdir: pathlib.Path, split: str) -> list:
  lines = []
  for line in (workdir / "metrics.jsonl").read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by SIGKILL
      continue
    if record["split"] == split:
      lines.append(record)
  return lines


def _restore(workdir: pathlib.Path, config) -> tuple:
  """(TrainState, data_state) of the latest checkpoint in `workdir`, restored into the structure
  that `config` builds (numpy leaves)."""
  config = config_lib.resolve(config)
  model = models.build(config.model)
  shape = pipeline.example_shape(config.dataset)
  tx = optimizer.build(config.optimizer, config.num_steps)
  host = jax.device_get(TrainState.create(init_variables(model, shape, jax.random.PRNGKey(0)), tx,
                                          jax.random.PRNGKey(1)))
  ckpt = checkpoint.Checkpointer(str(workdir), keep=100)
  try:
    state, data_state = ckpt.restore(host)
  finally:
    ckpt.close()
  return jax.tree.map(np.asarray, state), data_state


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory, data_dir):
  """A finished tiny run (used as a teacher, and as a workdir to resume): (workdir, config, results)."""
  workdir = tmp_path_factory.mktemp("teacher") / "run"
  config = _digits_config(data_dir, model=dict(dropout_hidden=0.2), dataset=dict(translate_px=1))
  results = train_and_evaluate(config, str(workdir))
  return workdir, config, results


# ----------------------------------------------------------------------------- kill and resume

TOTAL_STEPS = 60
KILL_AFTER_STEP = 20


def _cli_args(workdir: pathlib.Path, data_dir: str) -> list:
  """Hinton's teacher recipe scaled down: dropout (input 0.2, hidden 0.5) and ±2 px jitter, so the
  dropout RNG and the augmentation RNG must both resume exactly."""
  return [sys.executable, "-m", "experiments.distill",
          "--config=experiments/hinton2015/config.py:teacher,small", f"--workdir={workdir}",
          f"--config.dataset.data_dir={data_dir}", "--config.dataset.download=False",
          "--config.model.widths=(64,)", f"--config.num_steps={TOTAL_STEPS}",
          "--config.checkpoint_every_steps=5", "--config.log_every_steps=1",
          "--config.keep_checkpoints=3", "--config.parallel.num_devices=1"]


def _start(args, log: pathlib.Path) -> subprocess.Popen:
  with open(log, "wb") as out:  # the child keeps its own handle
    return subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)


def _kill_after_checkpoint(workdir: pathlib.Path, data_dir: str, log: pathlib.Path) -> int:
  """Starts a run and SIGKILLs it once a checkpoint of step >= KILL_AFTER_STEP is finalised.

  Returns the latest finalised step at the kill, or None if the run ended before it was killed.
  """
  process = _start(_cli_args(workdir, data_dir), log)
  deadline = time.time() + 300
  try:
    while time.time() < deadline:
      if process.poll() is not None:
        return None
      steps = _steps(workdir)
      if steps and steps[-1] >= KILL_AFTER_STEP:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        return _steps(workdir)[-1] if process.returncode == -signal.SIGKILL else None
      time.sleep(0.02)
    raise AssertionError(f"no checkpoint >= {KILL_AFTER_STEP} within 300 s; log:\n{log.read_text()[-3000:]}")
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()


def test_killed_and_resumed_run_is_bitwise_equal_to_uninterrupted(tmp_path, data_dir):
  """Run A is uninterrupted; run B is SIGKILLed mid-run, then re-run with the same command.
  Both end with bitwise-equal params, optimizer state, RNG and data-iterator state, and B saw the
  same batches after the resume (its per-step train metrics equal A's)."""
  workdir_a = tmp_path / "a"
  run_a = _start(_cli_args(workdir_a, data_dir), tmp_path / "a.log")  # concurrently with B
  try:
    for attempt in range(3):
      workdir_b = tmp_path / f"b{attempt}"
      killed_at = _kill_after_checkpoint(workdir_b, data_dir, tmp_path / f"b{attempt}_killed.log")
      if killed_at is not None:
        break
    else:
      pytest.fail("run B finished before it could be killed, three times")
    assert KILL_AFTER_STEP <= killed_at < TOTAL_STEPS, "B must have been killed mid-run"
    assert not (workdir_b / "results.json").exists()
    resumed = subprocess.run(_cli_args(workdir_b, data_dir), cwd=REPO, capture_output=True, text=True,
                             timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {killed_at}." in resumed.stderr, "B did not resume from its latest checkpoint"
  finally:
    run_a.wait(timeout=300)
  assert run_a.returncode == 0, (tmp_path / "a.log").read_text()[-3000:]

  assert _steps(workdir_a)[-1] == _steps(workdir_b)[-1] == TOTAL_STEPS
  config = config_lib.build(json.loads((workdir_a / "config.json").read_text()))
  assert json.loads((workdir_b / "config.json").read_text()) == json.loads(config.to_json())
  assert config.model.dropout_input > 0 and config.model.dropout_hidden > 0
  assert config.dataset.translate_px == 2
  state_a, data_a = _restore(workdir_a, config)
  state_b, data_b = _restore(workdir_b, config)
  assert int(state_a.step) == TOTAL_STEPS
  assert_trees_bitwise_equal(state_b, state_a, "state")
  assert data_b == data_a

  # Data order: every step after the resume point saw the same batch (and dropout masks),
  # so the logged training loss and accuracy are identical, step by step.
  train_a = {r["step"]: r for r in _metric_lines(workdir_a, "train")}
  train_b = {r["step"]: r for r in _metric_lines(workdir_b, "train")}  # later lines win: after resume
  assert sorted(train_a) == list(range(1, TOTAL_STEPS + 1))
  for step in range(killed_at + 1, TOTAL_STEPS + 1):
    assert train_b.get(step) == train_a[step], f"step {step}: {train_b.get(step)} != {train_a[step]}"
  assert json.loads((workdir_b / "results.json").read_text()) == json.loads(
      (workdir_a / "results.json").read_text())


# ----------------------------------------------------------------------------- finished runs


def test_rerunning_a_finished_workdir_does_not_train(teacher_run, tmp_path):
  workdir, config, results = teacher_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  checkpoints = _hashes(copy / "checkpoints")
  train_lines = _metric_lines(copy, "train")
  assert results["step"] == 20 and _steps(copy)[-1] == 20

  again = train_and_evaluate(config, str(copy))

  assert again == results == json.loads((copy / "results.json").read_text())
  assert _hashes(copy / "checkpoints") == checkpoints, "a finished run wrote checkpoints again"
  assert _metric_lines(copy, "train") == train_lines, "a finished run trained again"


def test_resuming_with_a_different_model_config_fails(teacher_run, tmp_path):
  workdir, config, _ = teacher_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  before = _hashes(copy)
  changed = {**config, "model": {**config["model"], "widths": (16,)}}
  with pytest.raises(UserError, match=r"different config.*model"):
    train_and_evaluate(changed, str(copy))
  assert _hashes(copy) == before, "the refused run changed the workdir"


def test_restoring_a_checkpoint_of_another_architecture_names_the_parameter(teacher_run, tmp_path):
  """Without config.json (e.g. checkpoints copied into a new workdir) the checkpoint itself still
  refuses the wrong model."""
  workdir, config, _ = teacher_run
  copy = tmp_path / "run"
  shutil.copytree(workdir / "checkpoints", copy / "checkpoints")
  changed = {**config, "model": {**config["model"], "widths": (16,)}}
  with pytest.raises(UserError, match=r"parameter \['params'\]\['Dense_0'\]\['(bias|kernel)'\] has shape"):
    train_and_evaluate(changed, str(copy))


# ----------------------------------------------------------------------------- teacher is read-only


def test_distillation_leaves_the_teacher_untouched(teacher_run, tmp_path, data_dir):
  teacher_dir, teacher_config, _ = teacher_run
  before = _hashes(teacher_dir)
  assert any(name.startswith("checkpoints/") for name in before)
  teacher_model = models.build(config_lib.resolve(teacher_config).model)
  expected = jax.eval_shape(lambda: init_variables(teacher_model, (8, 8, 1), jax.random.PRNGKey(0)))
  params_before = checkpoint.load_variables(str(teacher_dir), expected)

  student_dir = tmp_path / "student"
  student_config = _digits_config(
      data_dir, num_steps=10, model=dict(widths=(16,)),
      method=dict(name="hinton_kd", temperature=4.0, ce_weight=0.5, kd_weight=0.5),
      teacher=dict(checkpoint=str(teacher_dir), model=teacher_config["model"]),
      parallel=dict(num_devices=-1))  # 8 devices: the teacher is replicated onto each
  results = train_and_evaluate(student_config, str(student_dir))
  assert results["step"] == 10

  assert _hashes(teacher_dir) == before, "distillation modified the teacher's workdir"
  assert_trees_bitwise_equal(checkpoint.load_variables(str(teacher_dir), expected), params_before,
                        "teacher variables")
  # The teacher was used (its agreement is logged) ...
  assert all("teacher_agreement" in r for r in _metric_lines(student_dir, "train"))
  # ... but none of its variables were saved with the student: exactly the student's tree.
  student_model = models.build(config_lib.resolve(student_config).model)
  student_shapes = jax.tree.map(lambda x: x.shape, jax.eval_shape(
      lambda: init_variables(student_model, (8, 8, 1), jax.random.PRNGKey(0))))
  for step in _steps(student_dir):
    saved = ocp.StandardCheckpointer().restore(student_dir / "checkpoints" / str(step) / "variables")
    assert jax.tree.map(lambda x: x.shape, saved) == student_shapes
