"""Executes the Colab quickstart notebook in a real Jupyter kernel, so it cannot rot.

The notebook runs in quick mode (DISTILLERY_NOTEBOOK_QUICK=1: teacher 3 epochs, students 2) on the
session's offline datasets, then runs again over the same workdirs, which must resume: same
numbers, no new training steps.

Devices: the kernel is a subprocess and would inherit conftest's 8 simulated CPU devices through
XLA_FLAGS. We set XLA_FLAGS explicitly to 2 devices instead: the notebook still builds a
multi-device mesh and splits each batch (128, divisible by 2) over it, as on a GPU/TPU runtime,
and on a 2-core CI machine 2 simulated devices run faster than 8.
"""
import json
import os
import pathlib
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "experiments" / "colab" / "quickstart.ipynb"
RUNS = ("teacher", "student_hard", "student_kd")
ROW_LABELS = ("Teacher", "Student, hard labels", "Student, distilled")


def _execute(env: dict) -> tuple[nbformat.NotebookNode, float]:
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": str(REPO)}})
  start = time.time()
  client.execute(env=env)  # raises CellExecutionError, with the cell's traceback, if a cell fails
  return notebook, time.time() - start


def _outputs(notebook, mime: str) -> list[str]:
  return [output["data"][mime] for cell in notebook.cells if cell.cell_type == "code"
          for output in cell.get("outputs", []) if mime in output.get("data", {})]


def _results_table(notebook) -> str:
  tables = [text for text in _outputs(notebook, "text/markdown") if "test errors / 1,000" in text]
  assert len(tables) == 1, f"expected one results table, got {tables}"
  return tables[0]


def _train_lines(workdir: pathlib.Path) -> int:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return sum(json.loads(line)["split"] == "train" for line in lines)


def test_committed_notebook_is_valid_and_has_no_outputs():
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(notebook)
  assert notebook.nbformat == 4
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, "commit the notebook with outputs cleared"


def test_quickstart_notebook_runs_and_resumes(tmp_path, data_dir):
  workdir = tmp_path / "workdir"
  env = dict(os.environ,
             DISTILLERY_NOTEBOOK_QUICK="1",
             DISTILLERY_NOTEBOOK_WORKDIR=str(workdir),
             DISTILLERY_NOTEBOOK_DATA_DIR=data_dir,
             XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  env.pop("MPLBACKEND", None)  # the kernel's default, matplotlib's inline backend, as in Colab

  first, first_seconds = _execute(env)
  table = _results_table(first)
  for label in ROW_LABELS:
    assert f"| {label}" in table, table
  assert _outputs(first, "image/png"), "the accuracy plot is missing"
  text = "".join(output.get("text", "") for cell in first.cells for output in cell.get("outputs", []))
  assert "backend 'cpu': 2 x" in text and "'data': 2" in text, "platform / mesh cell output changed"

  run_dir = workdir / "hinton2015_small_quick"
  results = {run: json.loads((run_dir / run / "results.json").read_text()) for run in RUNS}
  assert results["teacher"]["step"] == 93 and results["student_kd"]["step"] == 62  # 31 steps/epoch
  for run in RUNS:
    assert 0.5 < results[run]["accuracy"] <= 1.0, (run, results[run])
  train_lines = {run: _train_lines(run_dir / run) for run in RUNS}

  # Again over the same workdirs: every run is found finished, so nothing trains and the table
  # reports the same numbers.
  second, second_seconds = _execute(env)
  assert _results_table(second) == table
  assert {run: _train_lines(run_dir / run) for run in RUNS} == train_lines
  assert second_seconds < first_seconds, (first_seconds, second_seconds)
