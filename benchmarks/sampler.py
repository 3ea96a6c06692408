r"""How much faster is the cached sampler than re-running the model on the whole prefix?

  ours   research.sampling.generate: one prefill into a key/value cache, then one-token steps;
  naive  research.sampling.naive_generate: every step runs the full model over the (B, P + N)
         buffer (the same draws from the same keys, so both produce the same tokens).

A DecoderLM(vocab 259, dim 256, depth 4, 4 heads / 2 kv heads, mlp 704), batch 8, prompt 32,
128 new tokens, temperature 1 without a stop token (every row runs all 128 steps). Both are
jitted; timings are medians of `--repeats` calls after a compile-and-warm-up call, ours and naive
taking turns. Goal (issue 4): ours / naive ≥ 10× in tokens/s.

  taskset -c 0,1 python benchmarks/sampler.py
See benchmarks/README.md ("Sampler") for results.
"""
import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.distill_step import load_average, machine_description  # noqa: E402

GOAL = 10.0


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--prompt", type=int, default=32)
  parser.add_argument("--new_tokens", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from research import sampling  # pylint: disable=import-outside-toplevel
  from research.models.decoder import DecoderLM  # pylint: disable=import-outside-toplevel

  model = DecoderLM(vocab_size=259, dim=256, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=704)
  variables = model.init(jax.random.key(0), jnp.zeros((1, args.prompt), jnp.int32))
  shape = (args.batch, args.prompt)
  tokens = jax.random.randint(jax.random.key(1), shape, 3, 259)
  segment_ids = jnp.ones(shape, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(args.prompt), shape)
  keys = sampling.row_keys(jax.random.key(2), args.batch)
  fns = {name: jax.jit(lambda v, t, s, p, k, fn=fn: fn(model, v, t, s, p, k, args.new_tokens))
         for name, fn in (("ours", sampling.generate), ("naive", sampling.naive_generate))}
  outs = {name: jax.block_until_ready(fn(variables, tokens, segment_ids, positions, keys))
          for name, fn in fns.items()}  # compile + warm up
  same = bool((outs["ours"]["tokens"] == outs["naive"]["tokens"]).all())
  times = {name: [] for name in fns}
  for _ in range(args.repeats):
    for name, fn in fns.items():
      start = time.perf_counter()
      jax.block_until_ready(fn(variables, tokens, segment_ids, positions, keys))
      times[name].append(time.perf_counter() - start)
  generated = args.batch * args.new_tokens
  rate = {name: generated / statistics.median(t) for name, t in times.items()}
  ratio = rate["ours"] / rate["naive"]
  result = {"machine": machine_description(), "devices": str(jax.devices()[0].device_kind),
            "load": load_average(), "batch": args.batch, "prompt": args.prompt,
            "new_tokens": args.new_tokens, "same_tokens": same,
            "seconds": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "tokens_per_s": {k: round(v, 1) for k, v in rate.items()}}
  print(json.dumps(result, indent=1))
  print(f"ours {rate['ours']:.1f} tok/s, naive {rate['naive']:.1f} tok/s")
  print(f"ours / naive = {ratio:.2f}  goal >= {GOAL:g}: {'PASS' if ratio >= GOAL else 'MISS'}")


if __name__ == "__main__":
  main()
