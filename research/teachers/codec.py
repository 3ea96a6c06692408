"""Top-k log-probs (what an API's `top_logprobs` returns) packed into 4 bytes per entry.

A teacher reached through an API shows only its k most probable tokens per position with their
log-probs. Caching those for a corpus is (tokens × k) entries, so each entry is one uint32: the high
ID_BITS = 18 bits hold the token id (vocabularies up to 262,144: Llama-3's 128k and Qwen's 152k fit),
the low LOGP_BITS = 14 bits hold q = round(-log_prob · SCALE), SCALE = 512 steps per nat, clipped to
2**14 - 1. The decoded log-prob -q / SCALE is within MAX_ERROR = 0.5 / SCALE (≈ 0.001 nats, a 0.1 %
relative error on the probability) of the original for every log-prob in [-MAX_NATS, 0]; smaller
log-probs, -inf included, decode as -MAX_NATS ≈ -32.0 (p < 1.3e-14).

Decoding uses only shifts, masks, casts and arithmetic, so it runs on numpy arrays on the host and on
jax arrays inside jit (uint32 `>>` is a logical shift in both).
"""
import jax
import jax.numpy as jnp
import numpy as np

ID_BITS = 18
LOGP_BITS = 14
SCALE = 512
MAX_VOCAB = 1 << ID_BITS
_LOGP_MASK = (1 << LOGP_BITS) - 1
MAX_NATS = _LOGP_MASK / SCALE
MAX_ERROR = 0.5 / SCALE
TAIL_FLOOR = 1e-6
_POSITIVE_SLACK = 1e-6


def encode_topk(ids, log_probs) -> np.ndarray:
  """uint32 codes (..., k) for token ids (..., k) (integers in [0, MAX_VOCAB)) and their log-probs.

  Log-probs must be ≤ 0 (positive rounding noise up to 1e-6 is read as 0) and not NaN; -inf and
  anything below -MAX_NATS are stored as -MAX_NATS. Raises ValueError otherwise.
  """
  ids, log_probs = np.asarray(ids), np.asarray(log_probs)
  if ids.shape != log_probs.shape:
    raise ValueError(f"encode_topk: ids have shape {ids.shape} but log_probs {log_probs.shape}; "
                     "pass one log-prob per token id")
  if not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"encode_topk: ids must be integers, got dtype {ids.dtype}")
  if ids.size and (ids.min() < 0 or ids.max() >= MAX_VOCAB):
    raise ValueError(f"encode_topk: token ids must be in [0, {MAX_VOCAB}), got range "
                     f"[{ids.min()}, {ids.max()}]; larger vocabularies need a wider codec")
  lp = log_probs.astype(np.float64)
  if np.isnan(lp).any():
    raise ValueError("encode_topk: log_probs contain NaN")
  if (lp > _POSITIVE_SLACK).any():
    raise ValueError(f"encode_topk: log_probs must be ≤ 0 (log of a probability), got max {lp.max()}; "
                     "pass log-probs, not logits or probabilities")
  q = np.rint(np.clip(-lp * SCALE, 0, _LOGP_MASK)).astype(np.uint32)
  return (ids.astype(np.uint32) << np.uint32(LOGP_BITS)) | q


def decode_topk(codes):
  """(ids int32, log_probs float32) from uint32 codes; numpy in → numpy out, jax in → jax out."""
  xp = jnp if isinstance(codes, jax.Array) else np
  codes = xp.asarray(codes)
  if codes.dtype == xp.int32:  # the same 32 bits seen as signed: reinterpret, don't convert
    codes = jax.lax.bitcast_convert_type(codes, jnp.uint32) if xp is jnp else codes.view(np.uint32)
  codes = codes.astype(xp.uint32)
  ids = (codes >> LOGP_BITS).astype(xp.int32)
  log_probs = xp.float32(0) - (codes & _LOGP_MASK).astype(xp.float32) * xp.float32(1.0 / SCALE)  # 0, not -0
  return ids, log_probs


def tail_log_mass(log_probs):
  """log of the probability the top-k (..., k) leave to every other token, (...): the "tail bucket".

  log(max(1 - Σ exp(log_probs), TAIL_FLOOR)); floored because quantisation and the API's own rounding
  can make the visible mass reach or pass 1. numpy in → numpy out, jax in → jax out.
  """
  xp = jnp if isinstance(log_probs, jax.Array) else np
  mass = xp.sum(xp.exp(log_probs), axis=-1)
  return xp.log(xp.maximum(1 - mass, TAIL_FLOOR))


def topk_from_logits(logits, k: int):
  """(ids int32, log_probs float32), each (..., k): the k most probable tokens of softmax(logits),
  largest first, as an API's top_logprobs would report them (ties in any order). jit-able."""
  log_probs = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), axis=-1)
  values, ids = jax.lax.top_k(log_probs, k)
  return ids.astype(jnp.int32), values
