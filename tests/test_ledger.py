"""The compute ledger (research/train/ledger.py): XLA's FLOP counts of a jitted and a shard_map'ed
matmul, totals / cost_to_reach / compare on a hand-written ledger, and the ledger.json that real
runs write (supervised, interrupted and resumed; distilled with the teacher in memory on 8 devices).
"""
import json
import pathlib

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from research.train import checkpoint, ledger
from research.train.loop import train_and_evaluate

M, K, N = 64, 32, 16


def _digits(data_dir: str, **overrides) -> dict:
  """A tiny supervised run on the 8×8 digits, batch 32: seconds, on one device."""
  config = dict(dataset=dict(name="digits", data_dir=data_dir, download=False), batch_size=32,
                eval_batch_size=120, num_steps=6, checkpoint_every_steps=3, log_every_steps=1,
                model=dict(name="mlp", widths=(32,)), parallel=dict(num_devices=1))
  for key, value in overrides.items():
    config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
  return config


def _forward_flops(batch: int, widths: tuple, inputs: int = 64, classes: int = 10) -> int:
  """2 · batch · Σ fan_in · fan_out: the MLP's matmuls, the bulk of its forward pass."""
  sizes = (inputs,) + tuple(widths) + (classes,)
  return 2 * batch * sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))


def _train_matmul_flops(batch: int, widths: tuple, inputs: int = 64, classes: int = 10) -> int:
  """The matmuls of forward + backward: each layer's forward and weight gradient, and the input
  gradient of every layer but the first (nothing needs the gradient of the images). Less than
  3 forwards: 2.13 of them for the (32,) MLP on 64 pixels, whose first layer dominates."""
  first = 2 * batch * inputs * (tuple(widths) + (classes,))[0]
  return 3 * _forward_flops(batch, widths, inputs, classes) - first


# ----------------------------------------------------------------------------- lowered_flops


def test_lowered_flops_of_a_matmul_is_2mkn():
  a, b = np.ones((M, K), np.float32), np.ones((K, N), np.float32)
  assert ledger.lowered_flops(jax.jit(lambda x, y: x @ y), (a, b)) == 2 * M * K * N


def test_lowered_flops_of_a_shard_mapped_matmul_over_8_devices():
  """A shard_map'ed program is one device's: × devices gives the whole matmul's 2mkn, whether the
  rows are split (no communication) or the contraction (plus a psum: one add per output element
  per device at most)."""
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(M, K)).astype(np.float32), rng.normal(size=(K, N)).astype(np.float32)
  rows = jax.jit(jax.shard_map(lambda x, y: x @ y, mesh=mesh, in_specs=(P("data"), P()), out_specs=P("data")))
  inner = jax.jit(jax.shard_map(lambda x, y: jax.lax.psum(x @ y, "data"), mesh=mesh,
                                in_specs=(P(None, "data"), P("data")), out_specs=P()))
  for f in (rows, inner):
    np.testing.assert_allclose(np.asarray(f(a, b)), a.astype(np.float64) @ b, rtol=1e-5, atol=1e-5)
  assert ledger.lowered_flops(rows, (a, b), 8) == pytest.approx(2 * M * K * N, rel=1e-3)
  assert ledger.lowered_flops(rows, (a, b)) == pytest.approx(2 * M * K * N / 8, rel=1e-3)  # one device's
  assert abs(ledger.lowered_flops(inner, (a, b), 8) - 2 * M * K * N) <= 8 * M * N


# ----------------------------------------------------------------------------- hand-written ledgers

DISTILLED = {"steps": 100, "wall_seconds": 50.0, "step_flops": 1000.0, "teacher_step_flops": 300.0,
             "labelling": {"teacher_forward_flops": 5000.0, "api_queries": 7, "api_tokens": 900, "examples": 64,
                           "seconds": 4.0}}
SCRATCH = {"steps": 200, "wall_seconds": 100.0, "step_flops": 700.0, "teacher_step_flops": 0.0, "labelling": {}}


def _write_run(directory: pathlib.Path, entries: dict, evals: list) -> str:
  """ledger.json, and metrics.jsonl with a train line per step and the eval lines (step, {metric: value})."""
  directory.mkdir()
  ledger.save(str(directory), entries)
  lines = [{"step": s, "split": "train", "loss": 9.0, "accuracy": 0.99} for s in range(1, entries["steps"] + 1)]
  lines += [{"step": s, "split": "eval", **values} for s, values in evals]
  lines.sort(key=lambda r: (r["step"], r["split"] == "eval"))
  (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
  return str(directory)


@pytest.fixture
def hand_runs(tmp_path):
  distilled = _write_run(tmp_path / "distilled", DISTILLED, [
      (20, {"accuracy": 0.5, "loss": 2.0}), (40, {"accuracy": 0.8, "loss": 1.0}), (60, {"accuracy": 0.9, "loss": 0.5})])
  scratch = _write_run(tmp_path / "scratch", SCRATCH, [
      (50, {"accuracy": 0.6, "loss": 3.0}), (150, {"accuracy": 0.76, "loss": 1.5}),
      (200, {"accuracy": 0.85, "loss": 1.2})])
  return distilled, scratch


def test_ledger_round_trips(tmp_path):
  assert ledger.load(str(tmp_path)) == {}
  ledger.save(str(tmp_path), DISTILLED)
  assert ledger.load(str(tmp_path)) == DISTILLED
  assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.json"]  # no temporary file left


def test_totals_split_student_and_teacher_and_add_labelling():
  assert ledger.totals(DISTILLED) == {
      "steps": 100, "student_flops": 700.0 * 100, "teacher_flops": 300.0 * 100 + 5000.0,
      "flops": 700.0 * 100 + 300.0 * 100 + 5000.0, "seconds": 50.0 + 4.0, "api_queries": 7, "api_tokens": 900}
  at_40 = ledger.totals(DISTILLED, 40)
  assert at_40["student_flops"] == 28000.0 and at_40["teacher_flops"] == 12000.0 + 5000.0
  assert at_40["flops"] == 45000.0 and at_40["seconds"] == pytest.approx(50.0 * 0.4 + 4.0)
  assert ledger.totals(SCRATCH, 150) == {"steps": 150, "student_flops": 105000.0, "teacher_flops": 0.0,
                                         "flops": 105000.0, "seconds": 75.0, "api_queries": 0, "api_tokens": 0}
  assert ledger.totals({})["flops"] == 0.0


def test_cost_to_reach_reads_the_first_eval_at_target(hand_runs):
  distilled, scratch = hand_runs
  reached = ledger.cost_to_reach(distilled, "accuracy", 0.75)
  assert reached == {**ledger.totals(DISTILLED, 40), "value": 0.8}
  assert reached["flops"] == 45000.0
  assert ledger.cost_to_reach(distilled, "accuracy", 0.8)["steps"] == 40  # reaching = equal counts
  assert ledger.cost_to_reach(distilled, "loss", 1.0, higher_is_better=False)["steps"] == 40
  assert ledger.cost_to_reach(distilled, "accuracy", 0.95) is None  # train lines do not count
  assert ledger.cost_to_reach(scratch, "accuracy", 0.75)["flops"] == 105000.0


def test_compare_gives_the_flop_ratio(hand_runs):
  distilled, scratch = hand_runs
  result = ledger.compare(distilled, scratch, "accuracy", 0.75)
  assert result["flop_ratio"] == pytest.approx(105000.0 / 45000.0)
  assert result["distilled"]["steps"] == 40 and result["scratch"]["steps"] == 150
  assert (result["target"], result["metric"]) == (0.75, "accuracy")
  never = ledger.compare(distilled, scratch, "accuracy", 0.9)  # scratch stops at 0.85
  assert never["distilled"]["steps"] == 60 and never["scratch"] is None and never["flop_ratio"] is None
  assert ledger.compare(distilled, scratch, "loss", 1.2, higher_is_better=False)["flop_ratio"] == pytest.approx(
      700.0 * 200 / 45000.0)  # scratch's loss reaches 1.2 at step 200, the distilled run's at 40


# ----------------------------------------------------------------------------- real runs


class _Interrupted(Exception):
  pass


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory, data_dir):
  """(workdir, its ledger when cut) of a 6-step supervised run stopped right after checkpoint 3 and
  its ledger were written (as a kill there would leave it; test_resume.py kills a subprocess),
  then rerun to the end."""
  workdir = tmp_path_factory.mktemp("ledger_plain") / "run"
  save, save_ledger = checkpoint.Checkpointer.save, ledger.save

  def save_and_finish(self, step, state, data_state):
    save(self, step, state, data_state)
    if step == 3:
      self.wait()

  def save_and_stop(directory, entries):
    save_ledger(directory, entries)
    if entries["steps"] == 3:
      raise _Interrupted

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(checkpoint.Checkpointer, "save", save_and_finish)
    patch.setattr(ledger, "save", save_and_stop)
    with pytest.raises(_Interrupted):
      train_and_evaluate(_digits(data_dir), str(workdir))
  cut = ledger.load(str(workdir))
  train_and_evaluate(_digits(data_dir), str(workdir))
  return workdir, cut


def test_a_run_writes_its_ledger(plain_run):
  workdir, _ = plain_run
  entries = ledger.load(str(workdir))
  assert entries["steps"] == 6 and entries["wall_seconds"] > 0 and entries["labelling"] == {}
  assert entries["teacher_step_flops"] == 0.0
  # The compiled step: forward + backward matmuls, plus Adam, biases, ReLU and softmax (< 30 %).
  assert 2.0 <= entries["step_flops"] / _forward_flops(32, (32,)) <= 4.0
  ratio = entries["step_flops"] / _train_matmul_flops(32, (32,))
  assert 1.0 <= ratio <= 1.3, ratio
  assert ledger.totals(entries)["flops"] == 6 * entries["step_flops"]
  final = ledger.cost_to_reach(str(workdir), "accuracy", 0.0)  # the one eval, at the last step
  assert final["steps"] == 6 and final["flops"] == 6 * entries["step_flops"]


def test_a_distilled_run_on_8_devices_counts_the_teachers_forward(plain_run, tmp_path, data_dir):
  """hinton_kd with the teacher in memory, the global batch of 32 split over 8 devices: the step's
  FLOPs are summed over devices, and the teacher's share is one forward of its MLP. The student's
  share is at least its matmuls on the global batch (one device's alone would be 1/8 of them) and
  at most 2.5× them: every device also runs the whole Adam update on its replica of the 1,210
  parameters, which is real work the sum counts 8 times."""
  config = _digits(data_dir, num_steps=2, model=dict(widths=(16,)), parallel=dict(num_devices=8),
                   method=dict(name="hinton_kd", ce_weight=0.5, kd_weight=0.5, temperature=2.0),
                   teacher=dict(checkpoint=str(plain_run[0]), model=dict(name="mlp", widths=(32,))))
  train_and_evaluate(config, str(tmp_path / "student"))
  entries = ledger.load(str(tmp_path / "student"))
  assert entries["steps"] == 2
  assert entries["teacher_step_flops"] == pytest.approx(_forward_flops(32, (32,)), rel=0.1)
  student = (entries["step_flops"] - entries["teacher_step_flops"]) / _train_matmul_flops(32, (16,))
  assert 1.0 <= student <= 2.5, student
  totals = ledger.totals(entries)
  assert totals["teacher_flops"] == 2 * entries["teacher_step_flops"]
  assert totals["student_flops"] + totals["teacher_flops"] == pytest.approx(2 * entries["step_flops"])


def test_a_resumed_run_adds_its_steps_and_seconds(plain_run):
  workdir, cut = plain_run
  assert cut["steps"] == 3 and cut["wall_seconds"] > 0
  entries = ledger.load(str(workdir))
  assert entries["steps"] == 6 and entries["wall_seconds"] > cut["wall_seconds"]
  assert entries["step_flops"] == cut["step_flops"]
