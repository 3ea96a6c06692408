r"""The teacher cache (issue 5): bytes per top-k entry, reader throughput, offline top-k KD step cost.

A random-init DecoderLM teacher (vocab 259, dim 128, depth 2) scores N random byte rows of length L;
its top-k (ids, log-probs) per position are encoded with research/teachers/codec.py and written
with research/teachers/cache.py exactly as experiments/label_with_teacher.py does. Then:

  bytes    the signal field's bytes per (token id, log-prob) entry (goal ≤ 4), and the whole
           array_record file's bytes per entry (the rows' own tokens, masks and TFDS framing
           included: what the disk really holds).
  reader   rows/s of the trainer's cache reader (research/data/pipeline.array_dataset → Grain
           iterator, as the loop reads it) vs rows/s the student consumes in the trainer's step
           (topk_kd, student dim 128, depth 2, batch --batch); goal reader ≥ 10× the student.
           The one-off load (cache.load: decoding every record) is printed too.
  step     the trainer's topk_kd step vs its plain cross-entropy ('supervised') step on the same
           student and batch: time ratio, goal ≤ 1.1×. Contenders take turns every round; the
           ratio is the median over rounds of the per-round ratio.

  taskset -c 0 python benchmarks/teacher_cache.py           # one core, as in benchmarks/README.md
"""
import argparse
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill_step import load_average, machine_description, trainer_steps  # noqa: E402  pylint: disable=wrong-import-position


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--rows", type=int, default=1024)
  parser.add_argument("--seq_len", type=int, default=128)
  parser.add_argument("--top_k", type=int, default=20)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--rounds", type=int, default=7)
  parser.add_argument("--steps", type=int, default=5)
  return parser.parse_args()


def main():
  args = parse_args()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from research import config as config_lib  # pylint: disable=import-outside-toplevel
  from research.data import pipeline  # pylint: disable=import-outside-toplevel
  from research.methods import lm  # pylint: disable=import-outside-toplevel
  from research.models.decoder import DecoderLM  # pylint: disable=import-outside-toplevel
  from research.teachers import cache, codec, signal  # pylint: disable=import-outside-toplevel
  from research.train import lm_step, parallel  # pylint: disable=import-outside-toplevel
  from research.train.state import TrainState, init_variables  # pylint: disable=import-outside-toplevel

  machine = machine_description()
  print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, affinity {machine['affinity']}; "
        f"load average {load_average()}; jax {jax.__version__} {jax.default_backend()}", flush=True)
  n, length, k, b = args.rows, args.seq_len, args.top_k, args.batch
  rng = np.random.default_rng(0)
  loss_mask = np.ones((n, length), np.float32)
  loss_mask[:, 0] = 0
  rows = {"tokens": rng.integers(3, 259, (n, length)).astype(np.int32), "segment_ids": np.ones((n, length), np.int32),
          "positions": np.broadcast_to(np.arange(length, dtype=np.int32), (n, length)).copy(), "loss_mask": loss_mask}
  teacher = DecoderLM(vocab_size=259, dim=128, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=352)
  t_vars = init_variables(teacher, (length,), jax.random.PRNGKey(1), jnp.int32)
  score = jax.jit(lambda v, t, s, p: codec.topk_from_logits(teacher.apply(v, t, s, p), k))
  ids, log_probs = [], []
  for start in range(0, n, 128):
    i, lp = score(t_vars, *(rows[key][start:start + 128] for key in ("tokens", "segment_ids", "positions")))
    ids.append(np.asarray(i))
    log_probs.append(np.asarray(lp))
  codes = codec.encode_topk(np.concatenate(ids), np.concatenate(log_probs))
  entries = codes.size
  provenance = signal.Provenance(level="topk", teacher="random-init", digest="", source="in-process",
                                 dataset={"name": "random"}, top_k=k, examples=n)
  with tempfile.TemporaryDirectory() as data_dir:
    folder = cache.write("bench_cache", {**rows, "signal_topk": codes}, provenance, {}, data_dir)
    on_disk = sum(p.stat().st_size for p in pathlib.Path(folder).glob("*array_record*"))
    print(f"\n[bytes] {n} rows x {length} positions x top-{k} = {entries} entries")
    print(f"  signal field: {codes.nbytes / entries:.2f} bytes/entry (goal <= 4: {'PASS' if codes.nbytes / entries <= 4 else 'MISS'}); "
          f"decode error <= {codec.MAX_ERROR:.5f} nats")
    print(f"  array_record files: {on_disk / entries:.2f} bytes/entry with the rows' tokens/masks and framing")
    start = time.perf_counter()
    arrays, _, _ = cache.load("bench_cache", data_dir)
    load_s = time.perf_counter() - start
  print(f"\n[reader] one-off load (decode every record): {n / load_s:.0f} rows/s ({load_s:.2f} s)")
  iterator = iter(pipeline.array_dataset(arrays, b, seed=0).to_iter_dataset())
  for _ in range(5):
    next(iterator)
  start, batches = time.perf_counter(), 200
  for _ in range(batches):
    next(iterator)
  reader_rows = batches * b / (time.perf_counter() - start)

  student = DecoderLM(vocab_size=259, dim=128, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=352)
  s_vars = jax.device_get(init_variables(student, (length,), jax.random.PRNGKey(2), jnp.int32))
  engine = parallel.ShardMapEngine(jax.devices()[:1])
  tx = optax.adam(1e-3)
  host_batch = {key: v[:b] for key, v in arrays.items()}
  contenders = {}
  for name, method_config in (("topk_kd", dict(name="topk_kd", ce_weight=0.0, kd_weight=1.0)),
                              ("ce", dict(name="supervised"))):
    method = lm.build(config_lib.build({"method": method_config}).method)
    state = engine.put_replicated(jax.device_get(TrainState.create(s_vars, tx, jax.random.PRNGKey(3), {},
                                                                   method.init_state(b, length))))
    batch = engine.put_batch(host_batch if name == "topk_kd" else {key: host_batch[key] for key in rows})
    step = engine.compile_train(lm_step.make_train_step(student, None, method, tx, 0, 0, 2))
    run, sync, _ = trainer_steps(jax, step, state, (), batch)
    run(1)
    sync()
    contenders[name] = (run, sync)
  times = {name: [] for name in contenders}
  names = list(contenders)
  for r in range(args.rounds):
    for name in names[r % 2:] + names[:r % 2]:
      run, sync = contenders[name]
      start = time.perf_counter()
      run(args.steps)
      sync()
      times[name].append((time.perf_counter() - start) / args.steps)
  student_rows = b / statistics.median(times["topk_kd"])
  print(f"  reader {reader_rows:.0f} rows/s vs the student's topk_kd step {student_rows:.1f} rows/s "
        f"(batch {b} x {length}): {reader_rows / student_rows:.0f}x (goal >= 10: "
        f"{'PASS' if reader_rows / student_rows >= 10 else 'MISS'})")
  ratio = statistics.median(a / c for a, c in zip(times["topk_kd"], times["ce"]))
  print(f"\n[step] topk_kd {statistics.median(times['topk_kd']) * 1e3:.1f} ms vs cross-entropy "
        f"{statistics.median(times['ce']) * 1e3:.1f} ms per step (median of {args.rounds} rounds x {args.steps}): "
        f"{ratio:.3f}x (goal <= 1.1: {'PASS' if ratio <= 1.1 else 'MISS'})")
  print(f"load average at the end: {load_average()}")


if __name__ == "__main__":
  main()
