"""The experiment script as a user runs it: `python -m experiments.distill --config=... --workdir=...`.

A tiny run must produce everything a run promises; a mistake in the request must fail at once
with one 'error:' line that names the problem, no traceback, and no workdir left behind.
The child processes inherit conftest's XLA_FLAGS, so they see 8 CPU devices.
"""
import json
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = "experiments/hinton2015/config.py"


def _distill(*args, timeout=300) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "experiments.distill", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _assert_user_error(result: subprocess.CompletedProcess, workdir: pathlib.Path) -> str:
  """Exit status 2, exactly one 'error: ...' line and no traceback on stderr, no workdir; returns the line."""
  assert result.returncode == 2, (result.returncode, result.stderr[-3000:])
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  assert not workdir.exists(), "a refused run created its workdir"
  return errors[0]


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory, data_dir):
  """One tiny end-to-end run of the teacher config on all 8 devices: 4,000 / 256 = 15 steps."""
  workdir = tmp_path_factory.mktemp("cli") / "teacher"
  result = _distill(f"--config={CONFIG}:teacher,small", f"--workdir={workdir}",
                    f"--config.dataset.data_dir={data_dir}", "--config.dataset.download=False",
                    "--config.model.widths=(64,)", "--config.num_epochs=1", "--config.batch_size=256",
                    "--config.log_every_steps=5", "--config.eval_every_steps=5",
                    "--config.checkpoint_every_steps=5")
  assert result.returncode == 0, result.stderr[-5000:]
  return workdir


def test_cli_runs_a_tiny_config_end_to_end(teacher_workdir):
  workdir = teacher_workdir
  config = json.loads((workdir / "config.json").read_text())
  assert config["model"]["widths"] == [64] and config["model"]["dropout_input"] == 0.2
  assert config["batch_size"] == 256 and config["dataset"]["translate_px"] == 2

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["split"] == "train"]
  evals = [r for r in records if r["split"] == "eval"]
  assert [r["step"] for r in train] == [5, 10, 15]
  assert all(set(r) >= {"loss", "accuracy"} for r in train)
  assert [r["step"] for r in evals] == [5, 10, 15]
  assert all(r["count"] == 1000 for r in evals)

  events = list((workdir / "tensorboard").glob("events.out.tfevents*"))
  assert events and all(e.stat().st_size > 0 for e in events)

  results = json.loads((workdir / "results.json").read_text())
  assert results["step"] == 15 and results["count"] == 1000
  assert results["errors"] == 1000 - round(results["accuracy"] * 1000)
  assert results["accuracy"] > 0.2, "15 Adam steps should beat chance (0.1) clearly"
  assert results == {k: v for k, v in evals[-1].items() if k != "split"}

  checkpoints = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert checkpoints == ["10", "15", "5"], checkpoints  # no temporary folders left
  assert sorted(p.name for p in (workdir / "checkpoints" / "15").iterdir() if p.is_dir()) == [
      "data", "train", "variables"]


def test_unknown_config_key_fails_cleanly(tmp_path):
  workdir = tmp_path / "run"
  result = _distill(f"--config={CONFIG}:teacher,small", f"--workdir={workdir}", "--config.optimizer.lrr=1")
  assert "lrr" in _assert_user_error(result, workdir)


def test_wrongly_typed_value_fails_cleanly(tmp_path):
  workdir = tmp_path / "run"
  result = _distill(f"--config={CONFIG}:teacher,small", f"--workdir={workdir}", "--config.num_epochs=abc")
  line = _assert_user_error(result, workdir)
  assert "num_epochs" in line and "abc" in line


def test_missing_teacher_checkpoint_fails_cleanly(tmp_path, data_dir):
  workdir = tmp_path / "run"
  missing = tmp_path / "nonexistent" / "teacher"
  result = _distill(f"--config={CONFIG}:student_kd,small", f"--workdir={workdir}",
                    f"--config.dataset.data_dir={data_dir}", f"--config.teacher.checkpoint={missing}")
  line = _assert_user_error(result, workdir)
  assert str(missing) in line and "teacher" in line


def test_batch_size_not_divisible_by_devices_fails_cleanly(tmp_path, data_dir):
  workdir = tmp_path / "run"
  result = _distill(f"--config={CONFIG}:teacher,small", f"--workdir={workdir}",
                    f"--config.dataset.data_dir={data_dir}", "--config.batch_size=100")
  line = _assert_user_error(result, workdir)
  assert "batch_size=100" in line and "8 devices" in line


def test_teacher_of_the_wrong_architecture_fails_naming_the_parameter(tmp_path, data_dir, teacher_workdir):
  """The teacher was trained as 784-64-10; student_kd's default teacher config is 784-1200-1200-10."""
  workdir = tmp_path / "run"
  result = _distill(f"--config={CONFIG}:student_kd,small", f"--workdir={workdir}",
                    f"--config.dataset.data_dir={data_dir}", f"--config.teacher.checkpoint={teacher_workdir}")
  line = _assert_user_error(result, workdir)
  assert "['params']['Dense_0']" in line and "(1200" in line, line
