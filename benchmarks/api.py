r"""What does labelling through the HTTP API cost against scoring the same rows in-process?

  api         experiments/serve_teacher in a subprocess; a TeacherClient (concurrency 4, no cache)
              sends each batch of rows as one /v1/completions request: token-id prompts, echo,
              max_tokens 0, logprobs 5, top_logprobs_ids (one forward pass per request, server side).
  in-process  the same batches, left-padded like the server does, through one jitted function: model.apply,
              log_softmax, the scored tokens' log-probs and lax.top_k(5), then device_get.
Scored tokens/s counts every row token (the first of each row has no log-prob but is sent).
Both are warmed up (compiled) first; each side's figure is the median of --repeats passes.

  taskset -c 0,1 python benchmarks/api.py                  # trains a tiny teacher (a few steps)
  python benchmarks/api.py --teacher=WORKDIR               # or labels with a finished LM run
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.distill_step import load_average, machine_description  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _teacher(workdir: str) -> str:
  """A tiny decoder LM trained for a few steps on synthetic arithmetic (quality is irrelevant)."""
  from research.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
  config = dict(dataset=dict(name="arithmetic", data_dir=os.path.join(workdir, "tfds"), download=False, seq_len=64,
                             prompt_len=24, eval_split="test[:64]"),
                batch_size=16, eval_batch_size=64, num_steps=5, parallel=dict(num_devices=1),
                model=dict(name="decoder", dim=128, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=256))
  run = os.path.join(workdir, "teacher")
  train_and_evaluate(config, run)
  return run


def _left_pad(rows: list) -> dict:
  """The server's layout: rows left-padded to a power-of-two width ≥ 16 (so both sides run the
  same shapes), as tokens / segment_ids / positions."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  width = max(16, 1 << (max(map(len, rows)) - 1).bit_length())
  out = {k: np.zeros((len(rows), width), np.int32) for k in ("tokens", "segment_ids", "positions")}
  for i, row in enumerate(rows):
    out["tokens"][i, width - len(row):] = row
    out["segment_ids"][i, width - len(row):] = 1
    out["positions"][i, width - len(row):] = np.arange(len(row))
  return out


def _start_server(teacher: str):
  """(process, base url) of experiments.serve_teacher on a free loopback port."""
  process = subprocess.Popen([sys.executable, "-m", "experiments.serve_teacher", f"--teacher={teacher}",
                              "--model_name=teacher", "--port=0", "--max_batch=64"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  for line in process.stdout:
    if line.startswith("serving"):
      return process, line.split(" at ")[-1].strip()
  raise RuntimeError(f"experiments.serve_teacher exited with {process.wait()} before serving")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--teacher", default="", help="a finished LM run; default: train a tiny one")
  parser.add_argument("--rows", type=int, default=1024)
  parser.add_argument("--batch", type=int, default=16, help="rows per request / per in-process batch")
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from research.data import text  # pylint: disable=import-outside-toplevel
  from research.eval import lm as lm_eval  # pylint: disable=import-outside-toplevel
  from research.teachers.client import TeacherClient  # pylint: disable=import-outside-toplevel

  with tempfile.TemporaryDirectory() as scratch:
    teacher = args.teacher or _teacher(scratch)
    config, model, variables = lm_eval.load_run(teacher)
    rows = text.rows(config.dataset, config.dataset.train_split)
    real = [t[s > 0].tolist() for t, s in zip(rows["tokens"][:args.rows], rows["segment_ids"][:args.rows])]
    tokens = sum(map(len, real))
    batches = [_left_pad(real[i:i + args.batch]) for i in range(0, len(real), args.batch)]
    bodies = [dict(prompt=real[i:i + args.batch], max_tokens=0, echo=True, logprobs=5, top_logprobs_ids=True)
              for i in range(0, len(real), args.batch)]

    @jax.jit
    def label(batch):
      logits = model.apply(variables, batch["tokens"], batch["segment_ids"], batch["positions"])[:, :-1]
      log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      scored = jnp.take_along_axis(log_probs, batch["tokens"][:, 1:, None], axis=-1)[..., 0]
      return scored, jax.lax.top_k(log_probs, 5)

    def in_process():
      for batch in batches:
        jax.device_get(label(batch))

    process, url = _start_server(teacher)
    try:
      def over_http():
        client = TeacherClient(url, "teacher", cache_path=None, concurrency=4)
        responses = client.post("/completions", bodies)
        assert sum(len(c["logprobs"]["tokens"]) for r in responses for c in r["choices"]) == tokens
        return client.usage

      over_http(), in_process()  # compile and warm up both
      times = {"http": [], "in_process": []}
      for _ in range(args.repeats):
        for name, fn in (("http", over_http), ("in_process", in_process)):
          start = time.perf_counter()
          fn()
          times[name].append(time.perf_counter() - start)
    finally:
      process.terminate()
      process.wait()

  rate = {name: tokens / statistics.median(t) for name, t in times.items()}
  print(json.dumps({"machine": machine_description(), "platform": platform.platform(),
                    "jax_backend": jax.default_backend(), "load": load_average(),
                    "teacher": args.teacher or "tiny (trained here)",
                    "rows": len(real), "tokens": tokens, "batch": args.batch,
                    "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()}}, indent=1))
  print(f"api labelling: {rate['http']:.0f} tok/s via HTTP / {rate['in_process']:.0f} tok/s in-process = "
        f"{rate['http'] / rate['in_process']:.3f}")


if __name__ == "__main__":
  main()
