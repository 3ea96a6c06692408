r"""Chunked token divergences (issue 4): memory and time of chunked_divergence against full logits.

For each divergence in --names (forward_kl, jsd), two losses of the same arguments (student hidden
states [N, D] and unembedding [D, V], teacher hidden states [N, D] and unembedding [D, V], the
teacher's passed as arguments, not baked in as constants), each compiled as
jax.jit(jax.value_and_grad(loss, argnums=(0, 1))) (gradients for the student's hidden states and
unembedding):
  naive     logits = hidden @ unembed for all N tokens of both models, then
            research.losses.sequence.divergence(name, s_logits, t_logits) (token mean);
  chunked   research.losses.sequence.chunked_divergence(name, ..., chunk_size=C): a scan over
            chunks of C tokens, each chunk's gradient taken as it goes (custom VJP), so no [N, V]
            array exists and nothing is recomputed.

part "memory" (compile only, nothing big is allocated: the inputs are jax.ShapeDtypeStructs):
  temp_size_in_bytes of compiled.memory_analysis() at N·V = 2^28 (default N 16384, V 16384, D 256,
  C 1024) and at twice the tokens (2N). Goals: chunked / naive ≤ 1/8 at N; chunked(2N) / chunked(N)
  ≤ 1.10 (the chunked temp must not grow with the number of tokens).
part "time": both run at a size this CPU does in about a second (default N 4096, V 8192, D 128,
  C 512), taking turns every round; times are medians over rounds [the fastest round], the ratio is
  the median over rounds of chunked / naive within a round. Goal: chunked / naive ≤ 1.15.

Run, pinned to two cores (about a minute, most of it compiling):
  taskset -c 0,1 python benchmarks/divergence.py
See benchmarks/README.md ("Chunked token divergences (issue 4)") for results.
"""
import argparse
import json
import os
import statistics
import sys
import time

# Run as a script from a checkout without `pip install -e .`: make the package importable.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill_step import load_average as _load, machine_description, verdict  # noqa: E402  pylint: disable=wrong-import-position

CLOCK = [time.perf_counter]
MEMORY_GOAL, GROWTH_GOAL, TIME_GOAL = 1 / 8, 1.10, 1.15
# [N, D] @ [D, V] products per value_and_grad. XLA's cost_analysis() counts a scan body once, not
# once per chunk, so it cannot compare the two; these counts can.
MATMULS = {"naive": 4, "chunked": 4}


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--names", default="forward_kl,jsd", help="comma-separated divergences (sequence.NAMES)")
  parser.add_argument("--parts", default="memory,time", help="comma-separated: memory, time")
  parser.add_argument("--mem_shape", default="16384,16384,256,1024", help="N,V,D,C of the memory part")
  parser.add_argument("--time_shape", default="4096,8192,128,512", help="N,V,D,C of the time part")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds of the time part")
  parser.add_argument("--steps", type=int, default=1, help="steps per timing")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                      help="process: CPU seconds of this process (use with one core, taskset -c 0)")
  parser.add_argument("--json", default="", help="also write the machine and the figures to this JSON file")
  return parser.parse_args()


def make_losses(jax, name: str, chunk: int) -> dict:
  """{"naive": fn, "chunked": fn}, each jit(value_and_grad(loss, argnums=(0, 1)))."""
  from research.losses import sequence  # pylint: disable=import-outside-toplevel

  def naive(s_h, s_w, t_h, t_w):
    return sequence.divergence(name, s_h @ s_w, t_h @ t_w)

  def chunked(s_h, s_w, t_h, t_w):
    return sequence.chunked_divergence(name, s_h, s_w, t_h, t_w, chunk_size=chunk)

  return {k: jax.jit(jax.value_and_grad(f, argnums=(0, 1))) for k, f in (("naive", naive), ("chunked", chunked))}


def part_memory(args, jax, names) -> dict:
  n, v, d, c = (int(x) for x in args.mem_shape.split(","))
  print(f"\n== memory: temp_size_in_bytes of the compiled value_and_grad (compile only), "
        f"V {v}, D {d}, chunk {c}, f32")
  rows = {}
  for name in names:
    losses = make_losses(jax, name, c)
    temps = {}
    for tokens in (n, 2 * n):
      shapes = (jax.ShapeDtypeStruct((tokens, d), "float32"), jax.ShapeDtypeStruct((d, v), "float32"))
      for kind, fn in losses.items():
        temps[kind, tokens] = fn.lower(*shapes, *shapes).compile().memory_analysis().temp_size_in_bytes
        print(f"  {name:10s} {kind:7s} N {tokens:6d} (N·V 2^{(tokens * v).bit_length() - 1}): "
              f"{temps[kind, tokens] / 2**20:9.1f} MiB", flush=True)
    shrink = temps["chunked", n] / temps["naive", n]
    growth = temps["chunked", 2 * n] / temps["chunked", n]
    print(f"  {name}: chunked / naive (N {n}) = {shrink:.4f} (goal ≤ {MEMORY_GOAL:.3f}: {verdict(shrink, MEMORY_GOAL)}); "
          f"chunked(2N) / chunked(N) = {growth:.4f} (goal ≤ {GROWTH_GOAL:.2f}: {verdict(growth, GROWTH_GOAL)}); "
          f"naive(2N) / naive(N) = {temps['naive', 2 * n] / temps['naive', n]:.2f}")
    rows[name] = {f"{k}_{t}_bytes": b for (k, t), b in temps.items()}
    rows[name].update(chunked_over_naive=shrink, chunked_growth=growth)
  return rows


def timed(fn, inputs, steps: int) -> float:
  """Seconds per call of `steps` back-to-back calls, waiting for the last result."""
  import jax  # pylint: disable=import-outside-toplevel
  start = CLOCK[0]()
  for _ in range(steps):
    out = fn(*inputs)
  jax.block_until_ready(out)
  return (CLOCK[0]() - start) / steps


def part_time(args, jax, names) -> dict:
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  n, v, d, c = (int(x) for x in args.time_shape.split(","))
  print(f"\n== time: N {n}, V {v}, D {d}, chunk {c}, f32; {args.clock} clock, median of {args.rounds} rounds "
        f"x {args.steps} steps [fastest round], naive and chunked take turns")
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  inputs = (jax.random.normal(keys[0], (n, d)), jax.random.normal(keys[1], (d, v)) / d**0.5,
            jax.random.normal(keys[2], (n, d)), jax.random.normal(keys[3], (d, v)) / d**0.5)
  unit = 2 * n * d * v  # FLOPs of one [N, D] @ [D, V]
  print(f"  matmuls: naive {MATMULS['naive']} x {unit / 1e9:.2f} GFLOP (both models' logits, the student's two "
        f"gradients), chunked {MATMULS['chunked']} (the same, chunk by chunk)")
  rows = {}
  for name in names:
    losses = make_losses(jax, name, c)
    start = time.perf_counter()
    outs = {k: jax.block_until_ready(fn(*inputs)) for k, fn in losses.items()}  # compiles
    compile_s = time.perf_counter() - start
    (lo_n, (gh_n, gw_n)), (lo_c, (gh_c, gw_c)) = outs["naive"], outs["chunked"]
    agree = max(float(jnp.max(jnp.abs(a - b)) / (jnp.max(jnp.abs(a)) + 1e-30)) for a, b in ((gh_n, gh_c), (gw_n, gw_c)))
    print(f"  {name}: loss naive {float(lo_n):.6f} chunked {float(lo_c):.6f}; gradients agree to {agree:.1e} "
          f"(max relative); first calls incl. compile {compile_s:.1f} s", flush=True)
    for fn in losses.values():
      timed(fn, inputs, args.warmup)
    times = {k: [] for k in losses}
    order = list(losses)
    for r in range(args.rounds):
      for kind in order[r % 2:] + order[:r % 2]:
        times[kind].append(timed(losses[kind], inputs, args.steps))
    ratio = statistics.median(a / b for a, b in zip(times["chunked"], times["naive"]))
    for kind, ts in times.items():
      print(f"  {name:10s} {kind:7s} {statistics.median(ts) * 1e3:9.1f} ms [{min(ts) * 1e3:.1f}]")
    print(f"  {name}: chunked / naive = {ratio:.3f} (goal ≤ {TIME_GOAL:.2f}: {verdict(ratio, TIME_GOAL)}) "
          f"[fastest/fastest {min(times['chunked']) / min(times['naive']):.2f}]", flush=True)
    for kind, ts in times.items():
      print(f"  {name:10s} {kind:7s} {MATMULS[kind] * unit / statistics.median(ts) / 1e9:6.0f} GFLOP/s of matmuls")
    rows[name] = {f"{k}_ms": statistics.median(ts) * 1e3 for k, ts in times.items()}
    rows[name].update({f"{k}_min_ms": min(ts) * 1e3 for k, ts in times.items()}, chunked_over_naive=ratio,
                      gradient_rel_diff=agree)
  return rows


def main():
  args = parse_args()
  if args.clock == "process":
    CLOCK[0] = time.process_time
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  machine = machine_description()
  print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, affinity {machine['affinity']} "
        f"(os.sched_getaffinity); load average {_load()} (other processes distort CPU timings)")
  print(f"jax {jax.__version__} (jaxlib {jax.lib.__version__}), backend {jax.default_backend()}, "
        f"{jax.devices()[0]}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  names = args.names.split(",")
  parts = args.parts.split(",")
  rows = {}
  start = time.perf_counter()
  if "memory" in parts:
    rows["memory"] = part_memory(args, jax, names)
  if "time" in parts:
    rows["time"] = part_time(args, jax, names)
  print(f"\nload average at the end: {_load()}; total {time.perf_counter() - start:.0f} s")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"machine": machine, "jax": jax.__version__, "args": vars(args), "date": time.strftime("%Y-%m-%d"),
                 "load_average_end": _load(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
