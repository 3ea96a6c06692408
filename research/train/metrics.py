"""Metrics: one JSONL file per run, TensorBoard event files (no TensorFlow), a progress line."""
import json
from absl import logging
import pathlib
import time

import jax
import numpy as np


class MetricWriter:
  """Writes `{"step": s, "split": ..., name: value}` lines to workdir/metrics.jsonl and to TensorBoard.

  Only process 0 writes, so multi-host runs produce one file.
  """

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
    self._jsonl = open(pathlib.Path(workdir) / "metrics.jsonl", "a", encoding="utf-8")
    self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self._active:
      return
    values = {k: float(np.asarray(v)) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    self._jsonl.flush()
    for name, value in values.items():
      self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def close(self) -> None:
    if self._active:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """Logs 'step s/N | loss … | x steps/s | ETA' from the steps actually run in this process."""

  def __init__(self, first_step: int, total_steps: int):
    self._start_step, self._start_time, self._total = first_step, time.time(), total_steps

  def line(self, step: int, metrics: dict) -> str:
    elapsed = max(time.time() - self._start_time, 1e-9)
    rate = (step - self._start_step) / elapsed
    eta = (self._total - step) / rate if rate > 0 else float("nan")
    values = " | ".join(f"{k} {float(v):.4f}" for k, v in metrics.items())
    return f"step {step}/{self._total} | {values} | {rate:.1f} steps/s | ETA {eta:.0f}s"

  def log(self, step: int, metrics: dict) -> None:
    logging.info(self.line(step, metrics))
