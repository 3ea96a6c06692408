"""The compute ledger: what a distillation cost, recorded by every run and every labelling job.

A run's workdir/ledger.json holds
  steps, wall_seconds              training steps done and the seconds spent in the training loop
  step_flops                       FLOPs of one global train step (XLA's cost analysis of the
                                   compiled step, summed over devices): the student's forward +
                                   backward + update, plus the teacher's forward when in memory
  teacher_step_flops               the in-memory teacher's share of step_flops (0 from a cache)
  labelling                        the ledger of the teacher cache the run trained from, if any:
                                   teacher_forward_flops, api_queries, api_tokens, examples, seconds
Totals are steps × per-step figures, so a resumed run adds its new steps to the old ones. Every
replica runs the optimizer update, so on D devices the update's FLOPs count D times: negligible
for real models, visible for tiny ones (compare runs on the same device count).
`cost_to_reach` turns a run's ledger and its eval curve into the cost of first reaching a target
quality — the number behind "distillation cuts training cost" (compare it with a from-scratch run
of the same student: `compare`).
"""
import json
import os
import pathlib

import jax

FILE = "ledger.json"


def lowered_flops(fn, args: tuple, devices: int = 1) -> float:
  """FLOPs of one call of the jitted `fn` on `args`, from XLA's cost analysis of the lowered
  program (no compilation). A shard_map'ed or pmapped program is one device's, so pass the number
  of devices it runs on. 0.0 when the backend gives no estimate."""
  analysis = fn.lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", 0.0)) * devices


def load(workdir: str) -> dict:
  path = pathlib.Path(workdir) / FILE
  return json.loads(path.read_text()) if path.exists() else {}


def save(workdir: str, ledger: dict) -> None:
  """Writes ledger.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  path = pathlib.Path(workdir) / FILE
  tmp = path.with_suffix(".json.tmp")
  tmp.write_text(json.dumps(ledger, indent=2))
  os.replace(tmp, path)


def totals(ledger: dict, steps: float | None = None) -> dict:
  """FLOPs and seconds after `steps` (default: all) training steps, labelling included.
  student_flops excludes the in-memory teacher's forward passes, teacher_flops sums them with
  the labelling job's teacher FLOPs."""
  done = ledger.get("steps", 0)
  steps = done if steps is None else steps
  labelling = ledger.get("labelling", {})
  teacher_step = ledger.get("teacher_step_flops", 0.0)
  student = (ledger.get("step_flops", 0.0) - teacher_step) * steps
  teacher = teacher_step * steps + labelling.get("teacher_forward_flops", 0.0)
  seconds = ledger.get("wall_seconds", 0.0) * (steps / done if done else 0.0) + labelling.get("seconds", 0.0)
  return {"steps": steps, "student_flops": student, "teacher_flops": teacher, "flops": student + teacher,
          "seconds": seconds, "api_queries": labelling.get("api_queries", 0),
          "api_tokens": labelling.get("api_tokens", 0)}


def cost_to_reach(workdir: str, metric: str, target: float, higher_is_better: bool = True) -> dict | None:
  """The ledger totals at the first evaluation where `metric` reached `target` (eval lines of
  workdir/metrics.jsonl), or None if the run never did."""
  path = pathlib.Path(workdir) / "metrics.jsonl"
  reached = lambda v: v >= target if higher_is_better else v <= target
  for line in path.read_text().splitlines():
    entry = json.loads(line)
    if entry.get("split") == "eval" and metric in entry and reached(entry[metric]):
      return {**totals(load(workdir), entry["step"]), "value": entry[metric]}
  return None


def compare(distilled: str, scratch: str, metric: str, target: float, higher_is_better: bool = True) -> dict:
  """Cost of reaching `target` by distillation vs from scratch: both totals and their FLOP ratio
  (scratch / distilled; None when either never reached it)."""
  a = cost_to_reach(distilled, metric, target, higher_is_better)
  b = cost_to_reach(scratch, metric, target, higher_is_better)
  ratio = b["flops"] / a["flops"] if a and b and a["flops"] else None
  return {"target": target, "metric": metric, "distilled": a, "scratch": b, "flop_ratio": ratio}
