"""Beam search over a DecoderLM with the key/value cache (the decoding Kim & Rush compare with
greedy), for left-padded prompts in the layout of research/sampling/sampler.py.

Finished beams (those that emitted `stop_id`) stay in the beam with their score and only extend by
PAD at log-probability 0, competing with the live candidates. With length_penalty 0 this finds
the same best sequence as keeping a separate list of finished hypotheses: a live candidate pushed
out by a finished beam already scores below it, and extending a beam never raises its score.
"""
from typing import Optional

import jax
import jax.numpy as jnp
from jax import lax

from research.sampling.sampler import _layout, varying_zeros


def _normalise(scores, lengths, length_penalty):
  return scores if length_penalty == 0 else scores / jnp.maximum(lengths, 1) ** length_penalty


def beam_search(model, variables, tokens, segment_ids, positions, beam_size: int,
                max_new_tokens: int, stop_id: Optional[int], pad_id: int = 0,
                length_penalty: float = 0.0, cache_dtype=jnp.float32) -> dict:
  """The best of `beam_size` beams per row after a left-padded prompt (B, P), ranked by
  sum of token log-probs / length**length_penalty (length = generated tokens incl. the stop
  token). One prefill over the B prompts, whose cache is then repeated per beam and reordered with
  the surviving beams each step. `stop_id` None: every beam runs max_new_tokens.

  Returns generate's layout (all (B, P + N)): 'tokens', 'segment_ids', 'positions', 'loss_mask',
  'log_probs' (per generated token, at temperature 1), 'lengths' (B,), and 'scores' (B,) float32,
  the best beam's normalised score."""
  batch, prompt_len = tokens.shape
  k, n = beam_size, max_new_tokens
  cache = model.init_cache(batch, prompt_len + n, cache_dtype)
  logits, cache = model.apply(variables, tokens, segment_ids, positions, cache=cache,
                              cache_index=0)
  cache = jax.tree_util.tree_map(lambda a: jnp.repeat(a, k, axis=0), cache)
  last = jnp.repeat(logits[:, -1], k, axis=0)  # (B·K, V)
  vocab = last.shape[-1]
  segment = jnp.repeat(segment_ids[:, -1], k)
  start = jnp.repeat(positions[:, -1] + 1, k)
  # Only beam 0 is live at first: the others are copies and would duplicate its candidates.
  zeros = varying_zeros(tokens, (batch, k))  # see varying_zeros: shard_map loop carries
  history = jnp.broadcast_to(zeros[..., None], (batch, k, n))
  state = {"scores": jnp.where(jnp.arange(k) == 0, zeros.astype(jnp.float32), -jnp.inf),
           "done": zeros.astype(bool), "lengths": zeros, "new": history + pad_id,
           "live": history.astype(bool), "lp": history.astype(jnp.float32)}

  def body(carry):
    step, cache, last, s = carry
    logp = jax.nn.log_softmax(last.astype(jnp.float32), axis=-1).reshape(batch, k, vocab)
    first = jnp.arange(vocab) == 0  # a finished beam's single candidate slot
    done = s["done"][..., None]
    cand = jnp.where(done, jnp.where(first, s["scores"][..., None], -jnp.inf),
                     s["scores"][..., None] + logp)
    cand_len = jnp.where(done, s["lengths"][..., None], s["lengths"][..., None] + 1)
    rank = _normalise(cand, cand_len, length_penalty).reshape(batch, k * vocab)
    _, index = lax.top_k(rank, k)                      # (B, K)
    beam, tok = index // vocab, (index % vocab).astype(jnp.int32)
    pick = lambda a: jnp.take_along_axis(a, beam, axis=1)
    was_done = pick(s["done"])
    live = ~was_done
    token = jnp.where(live, tok, pad_id)
    lp = jnp.where(live, jnp.take_along_axis(logp.reshape(batch, k * vocab), index, 1), 0.0)
    history = lambda a: jnp.take_along_axis(a, beam[..., None], axis=1)
    put = lambda a, col: lax.dynamic_update_slice(a, col[..., None].astype(a.dtype), (0, 0, step))
    s = {"scores": jnp.take_along_axis(cand.reshape(batch, k * vocab), index, 1),
         "done": was_done | ((token == stop_id) if stop_id is not None else False),
         "lengths": pick(s["lengths"]) + live,
         "new": put(history(s["new"]), token), "live": put(history(s["live"]), live),
         "lp": put(history(s["lp"]), lp)}
    rows = (jnp.arange(batch)[:, None] * k + beam).reshape(-1)
    cache = jax.tree_util.tree_map(lambda a: a[rows], cache)
    flat_live = live.reshape(-1)
    logits, cache = model.apply(variables, token.reshape(-1, 1), (segment * flat_live)[:, None],
                                (start + step)[:, None], cache=cache,
                                cache_index=prompt_len + step)
    return step + 1, cache, logits[:, -1], s

  cond = lambda carry: (carry[0] < n) & ~jnp.all(carry[3]["done"])
  *_, s = lax.while_loop(cond, body, (jnp.int32(0), cache, last, state))
  final = _normalise(s["scores"], s["lengths"], length_penalty)
  best = jnp.argmax(final, axis=1)
  take = lambda a: jnp.take_along_axis(a, best.reshape((batch,) + (1,) * (a.ndim - 1)), 1)[:, 0]
  out = _layout(tokens, segment_ids, positions, take(s["new"]), take(s["live"]), take(s["lp"]),
                take(s["lp"]))
  del out["sample_log_probs"]
  out["scores"] = take(final)
  return out
