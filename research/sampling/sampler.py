"""Ancestral sampling from a DecoderLM with a key/value cache, and its no-cache reference.

Prompts come in the left-padded prompt layout (issue 4's token conventions): (B, P) tokens,
segment ids (0 on the left padding, the row's segment on real tokens) and positions counting from
0 at the first real token, so column P - 1 is every row's last prompt token and generation
continues at column P for every row at once. Each row needs at least one real prompt token.

Everything is jit- and shard_map-friendly: static shapes, no host callbacks, and randomness comes
from one key per row (row_keys), so the rows a device gets draw exactly what they would in the
whole batch.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

NEG_INF = -jnp.inf


def row_keys(rng, batch: int, offset: int = 0) -> jnp.ndarray:
  """(batch, 2) uint32 raw keys: fold_in(rng, offset + row). Use `offset` = the index of the
  batch's first row in a larger batch to reproduce that batch's keys for a slice of it."""
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, offset + i))(jnp.arange(batch))
  if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
    keys = jax.random.key_data(keys)
  return keys


def process_logits(logits: jnp.ndarray, temperature: float = 1.0, top_k: int = 0,
                   top_p: float = 1.0) -> jnp.ndarray:
  """The sampling distribution's logits (..., V) in float32: divided by `temperature` (> 0), then
  only the `top_k` largest kept (0 = all), then only the smallest set of most probable tokens
  whose probability reaches `top_p` (the top token always kept); the rest get -inf. Tokens tied
  with the last kept one are kept too."""
  logits = logits.astype(jnp.float32) / temperature
  if top_k and top_k < logits.shape[-1]:
    kth = lax.top_k(logits, top_k)[0][..., -1:]
    logits = jnp.where(logits < kth, NEG_INF, logits)
  if top_p < 1.0:
    ordered = jnp.sort(logits, axis=-1)[..., ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # mass of the strictly more probable tokens
    kept = jnp.where(before < top_p, ordered, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, NEG_INF, logits)
  return logits


def choose(logits, keys, step, temperature, top_k, top_p):
  """One token per row from logits (B, V): greedy when temperature == 0, else a draw with key
  fold_in(keys[row], step). Returns (tokens, raw log-probs, sampling log-probs), the log-probs of
  the chosen tokens under softmax(logits) and under the processed distribution (0 for greedy: a
  point mass)."""
  logits = logits.astype(jnp.float32)
  raw = jax.nn.log_softmax(logits, axis=-1)
  if temperature == 0:
    token = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    sampled = jnp.zeros(token.shape, jnp.float32)
  else:
    processed = process_logits(logits, temperature, top_k, top_p)
    draw = lambda key, row: jax.random.categorical(jax.random.fold_in(key, step), row)
    token = jax.vmap(draw)(keys, processed).astype(jnp.int32)
    sampled = jnp.take_along_axis(jax.nn.log_softmax(processed, axis=-1), token[:, None], 1)[:, 0]
  return token, jnp.take_along_axis(raw, token[:, None], 1)[:, 0], sampled


def varying_zeros(like, shape) -> jnp.ndarray:
  """int32 zeros of `shape` computed from the input `like`: inside jax.shard_map a loop carry
  must vary over the mesh axes like the values the loop writes into it, so fresh constants
  would not do."""
  return jnp.zeros(shape, jnp.int32) + jnp.zeros_like(like[:, :1], jnp.int32)


def _emit(token, done, stop_id, pad_id):
  """Pads rows that had already stopped; returns (token, emitted?, done after this token)."""
  live = ~done
  token = jnp.where(live, token, pad_id)
  if stop_id is not None:
    done = done | (live & (token == stop_id))
  return token, live, done


def _layout(tokens, segment_ids, positions, new, live, log_probs, sample_log_probs):
  """Prompt (B, P) + generated columns (B, N) → the batch layout dict (all (B, P + N))."""
  n = new.shape[1]
  segment = segment_ids[:, -1:]
  start = positions[:, -1:] + 1
  live_i = live.astype(jnp.int32)
  zeros = jnp.zeros(tokens.shape, jnp.float32)
  cat = lambda a, b: jnp.concatenate([a, b], axis=1)
  return {
      "tokens": cat(tokens, new),
      "segment_ids": cat(segment_ids, segment * live_i),
      "positions": cat(positions, (start + jnp.arange(n)) * live_i),
      "loss_mask": cat(zeros, live.astype(jnp.float32)),
      "log_probs": cat(zeros, jnp.where(live, log_probs, 0.0)),
      "sample_log_probs": cat(zeros, jnp.where(live, sample_log_probs, 0.0)),
      "lengths": live_i.sum(axis=1),
  }


def generate(model, variables, tokens, segment_ids, positions, rngs, max_new_tokens: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             stop_id: Optional[int] = None, pad_id: int = 0, cache_dtype=jnp.float32) -> dict:
  """Samples up to `max_new_tokens` per row after left-padded prompts (B, P), with one prefill
  into a cache of P + max_new_tokens columns and then a while loop of one-token steps (it exits
  once every row has emitted `stop_id`). `rngs`: (B, 2) uint32 keys from row_keys.

  Returns, all (B, P + N) in the batch layout: 'tokens' (PAD after a row's stop token),
  'segment_ids', 'positions', 'loss_mask' (1 on generated tokens up to and including the stop
  token), 'log_probs' (float32 log-probability of each generated token under the model at
  temperature 1 without top-k/top-p; 0 elsewhere), 'sample_log_probs' (under the processed
  distribution actually sampled from), and 'lengths' (B,) generated tokens per row."""
  batch, prompt_len = tokens.shape
  n = max_new_tokens
  cache = model.init_cache(batch, prompt_len + n, cache_dtype)
  logits, cache = model.apply(variables, tokens, segment_ids, positions, cache=cache,
                              cache_index=0)
  segment, start = segment_ids[:, -1], positions[:, -1] + 1
  zeros = varying_zeros(tokens, (batch, n))
  out = {"new": zeros + pad_id, "live": zeros.astype(bool), "lp": zeros.astype(jnp.float32),
         "slp": zeros.astype(jnp.float32)}

  def cond(carry):
    step, _, _, done, _ = carry
    return (step < n) & ~jnp.all(done)

  def body(carry):
    step, cache, last, done, out = carry
    token, lp, slp = choose(last, rngs, step, temperature, top_k, top_p)
    token, live, done = _emit(token, done, stop_id, pad_id)
    put = lambda buf, col: lax.dynamic_update_slice(buf, col[:, None].astype(buf.dtype), (0, step))
    out = {"new": put(out["new"], token), "live": put(out["live"], live),
           "lp": put(out["lp"], lp), "slp": put(out["slp"], slp)}
    # Feed the token (segment 0 for finished rows: the cache then ignores it). The last step's
    # logits are unused; skipping that one call would cost a cond for 1/N of the work.
    logits, cache = model.apply(variables, token[:, None], (segment * live)[:, None],
                                (start + step)[:, None], cache=cache,
                                cache_index=prompt_len + step)
    return step + 1, cache, logits[:, -1], done, out

  carry = (jnp.int32(0), cache, logits[:, -1], zeros[:, 0].astype(bool), out)
  *_, out = lax.while_loop(cond, body, carry)
  return _layout(tokens, segment_ids, positions, out["new"], out["live"], out["lp"], out["slp"])


def naive_generate(model, variables, tokens, segment_ids, positions, rngs, max_new_tokens: int,
                   temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   stop_id: Optional[int] = None, pad_id: int = 0) -> dict:
  """generate without a cache: every step re-runs the model on the whole (B, P + N) buffer (not
  yet written columns are segment 0, so masked out) and reads the logits at the last written
  column. The same keys give the same draws: the reference for tests and the benchmark."""
  batch, prompt_len = tokens.shape
  n = max_new_tokens
  segment, start = segment_ids[:, -1], positions[:, -1] + 1
  pad = lambda a, value=0: jnp.concatenate([a, jnp.full((batch, n), value, a.dtype)], axis=1)
  buf = (pad(tokens, pad_id), pad(segment_ids), pad(positions))
  zeros = varying_zeros(tokens, (batch, n)).astype(jnp.float32)

  def body(step, carry):
    (toks, segs, poss), done, live_all, lp_all, slp_all = carry
    logits = model.apply(variables, toks, segs, poss)
    last = lax.dynamic_index_in_dim(logits, prompt_len + step - 1, axis=1, keepdims=False)
    token, lp, slp = choose(last, rngs, step, temperature, top_k, top_p)
    token, live, done = _emit(token, done, stop_id, pad_id)
    col = prompt_len + step
    put = lambda b, c, at: lax.dynamic_update_slice(b, c[:, None].astype(b.dtype), (0, at))
    buf = (put(toks, token, col), put(segs, segment * live, col), put(poss, start + step, col))
    return (buf, done, put(live_all, live, step), put(lp_all, lp, step), put(slp_all, slp, step))

  carry = (buf, zeros[:, 0].astype(bool), zeros.astype(bool), zeros, zeros)
  (toks, _, _), _, live, lp, slp = lax.fori_loop(0, n, body, carry)
  return _layout(tokens, segment_ids, positions, toks[:, prompt_len:], live, lp, slp)
