"""A Llama-style decoder-only language model (pre-norm, RMSNorm, GQA with RoPE, SwiGLU).

Inputs are token ids (B, L) with optional `segment_ids` (0 = padding; sequences packed into one
row carry distinct ids) and `positions` (default 0..L-1; restart at 0 per packed segment). A
query attends to keys that are at or before it in the row, in its segment and not padding, so
packed sequences see exactly what they would alone. A padding query sees no key: its attention
output is zero, so its logits depend only on its own token (and should be masked out of a loss).

Submodules keep flax's CamelCase names (Embed_0, Block_0, RMSNorm_0, Dense_0); lower-case names
are the feature taps: "block1".."blockN" (each block's output, (B, L, dim)) and "penultimate"
(the final RMSNorm's output, the unembedding's input, (B, L, dim)).

Incremental decoding uses an explicit key/value cache (a plain pytree, no mutable collection):
`model.init_cache(batch, max_len)` makes an empty one and
`model.apply(variables, tokens, segment_ids, positions, cache=cache, cache_index=i)` writes the
chunk's keys/values (already RoPE-rotated) and segment ids at columns [i, i + L) and returns
(logits, new_cache). The chunk's queries see cache columns ≤ their own, of their segment, not
empty (segment 0), so prefill + one-token steps give the full forward pass's logits.
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
import numpy as np

from research.models.common import tap

RMS_EPSILON = 1e-6


def check_config(dim: int, num_heads: int, num_kv_heads: int) -> int:
  """Validates the attention shape and returns the head dimension (even, for RoPE's pairs)."""
  if num_heads <= 0 or num_kv_heads <= 0:
    raise ValueError(f"num_heads={num_heads} and num_kv_heads={num_kv_heads} must be positive.")
  if num_heads % num_kv_heads:
    raise ValueError(f"num_heads={num_heads} must be a multiple of num_kv_heads={num_kv_heads} "
                     "(each key/value head serves an equal group of query heads).")
  if dim % num_heads:
    raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}.")
  head_dim = dim // num_heads
  if head_dim % 2:
    raise ValueError(f"head dimension dim/num_heads={head_dim} must be even (RoPE rotates pairs).")
  return head_dim


def rope(x: jnp.ndarray, positions: jnp.ndarray, base: float) -> jnp.ndarray:
  """Rotary embedding of x (B, L, H, D) at `positions` (B, L), in the half-split layout (GPT-NeoX
  / HF Llama): feature i pairs with i + D/2 and rotates by angle position · base^(-2i/D). A dot
  product of two rotated vectors then depends only on their position difference."""
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) * 2 / x.shape[-1])
  angle = positions.astype(jnp.float32)[..., None, None] * freq  # (B, L, 1, D/2)
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attention_mask(segment_ids: jnp.ndarray) -> jnp.ndarray:
  """(B, L) segment ids → (B, 1, L, L) boolean: key j ≤ query i, same segment, key not
  padding."""
  length = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((length, length), bool))
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  real_key = (segment_ids != 0)[:, None, :]
  return (causal & same & real_key)[:, None]


def cache_mask(segment_ids: jnp.ndarray, key_segment_ids: jnp.ndarray, index) -> jnp.ndarray:
  """The chunk (B, L) written at cache columns [index, index + L) of a cache whose key segments
  (already updated) are (B, S) → (B, 1, L, S): key column ≤ query column, same segment, key not
  empty."""
  length, size = segment_ids.shape[1], key_segment_ids.shape[1]
  causal = jnp.arange(size)[None, :] <= index + jnp.arange(length)[:, None]
  same = segment_ids[:, :, None] == key_segment_ids[:, None, :]
  real_key = (key_segment_ids != 0)[:, None, :]
  return (causal[None] & same & real_key)[:, None]


class Attention(nn.Module):
  """Grouped-query causal self-attention: num_heads query heads share num_kv_heads key/value
  heads (query head h uses kv head h // (num_heads / num_kv_heads)); no biases."""
  num_heads: int
  num_kv_heads: int
  rope_base: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, index=None):
    """`kv` = None, or this layer's cache {"keys", "values"} (B, S, kv_heads, head_dim): the new
    keys/values are written at column `index`, attention runs over all S columns (`mask` is
    then (B, 1, L, S)) and the result is (output, new kv)."""
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    dense = lambda n: nn.Dense(n, use_bias=False, dtype=self.dtype)
    q = dense(self.num_heads * head_dim)(x).reshape(batch, length, self.num_heads, head_dim)
    k = dense(self.num_kv_heads * head_dim)(x).reshape(batch, length, self.num_kv_heads, head_dim)
    v = dense(self.num_kv_heads * head_dim)(x).reshape(batch, length, self.num_kv_heads, head_dim)
    q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
    if kv is not None:
      zero = jnp.zeros_like(index)  # dynamic_update_slice wants one index dtype
      write = lambda buf, new: lax.dynamic_update_slice(
          buf, new.astype(buf.dtype), (zero, index, zero, zero))
      kv = {"keys": write(kv["keys"], k), "values": write(kv["values"], v)}
      k, v = kv["keys"].astype(self.dtype), kv["values"].astype(self.dtype)
    # Each kv head's group of query heads is folded into its query rows, (B, kv, group·L, d), so
    # both products are plain batched matmuls over (B, kv) (XLA:CPU runs these faster than the
    # 5-D grouped einsum: ~10-20 % on a forward + backward).
    group = self.num_heads // self.num_kv_heads
    q = q.reshape(batch, length, self.num_kv_heads, group, head_dim).transpose(0, 2, 3, 1, 4)
    q = q.reshape(batch, self.num_kv_heads, group * length, head_dim)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # (B, kv, S, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(head_dim)
    # mask (B, 1, L, S), the same for every head of a group. A padding query (no visible key)
    # gets uniform weights here, not 0/0; its output is zeroed below, per query, rather than by
    # re-masking the weights after the softmax (a second pass over the largest tensor).
    tiled = jnp.tile(mask, (1, 1, group, 1))  # (B, 1, group·L, S), rows in (group, L) order
    scores = jnp.where(tiled, scores, jnp.finfo(jnp.float32).min)
    weights = nn.softmax(scores, axis=-1).astype(self.dtype)
    out = jnp.einsum("bkqs,bksd->bkqd", weights, v).reshape(batch, self.num_kv_heads, group, length, head_dim)
    out = out.transpose(0, 3, 1, 2, 4).reshape(batch, length, dim)
    out = jnp.where(jnp.any(mask, axis=-1)[:, 0, :, None], out, 0)
    out = dense(dim)(out)
    return out if kv is None else (out, kv)


class Block(nn.Module):
  """h = x + Attention(RMSNorm(x)), then h + SwiGLU(RMSNorm(h)), where
  SwiGLU(y) = (silu(y W1) ⊙ y W3) W2."""
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  rope_base: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask, kv=None, index=None):
    """Returns the block's output, or (output, new kv) when given a layer cache `kv`."""
    norm = lambda: nn.RMSNorm(RMS_EPSILON, dtype=self.dtype)
    attended = Attention(self.num_heads, self.num_kv_heads, self.rope_base, self.dtype)(
        norm()(x), positions, mask, kv, index)
    if kv is not None:
      attended, kv = attended
    x = x + attended
    y = norm()(x)
    dense = lambda n: nn.Dense(n, use_bias=False, dtype=self.dtype)
    gate, up = dense(self.mlp_dim)(y), dense(self.mlp_dim)(y)  # W1, W3
    out = x + dense(x.shape[-1])(nn.silu(gate) * up)            # W2
    return out if kv is None else (out, kv)


class DecoderLM(nn.Module):
  """Token embedding → `depth` pre-norm blocks → RMSNorm → unembedding (a Dense, or the
  transposed embedding when `tie_embeddings`). Returns logits (B, L, vocab_size) in `dtype`."""
  vocab_size: int
  dim: int
  depth: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  tie_embeddings: bool = False
  rope_base: float = 10000.0
  dtype: Any = jnp.float32

  def __post_init__(self):
    check_config(self.dim, self.num_heads, self.num_kv_heads)  # fail at construction, not at init
    super().__post_init__()

  def init_cache(self, batch: int, max_len: int, dtype: Any = jnp.float32) -> dict:
    """An empty cache for `batch` rows of up to `max_len` tokens: {"segment_ids": (B, S) int32
    zeros (0 = empty: masked out), "layers": one {"keys", "values"} (B, S, num_kv_heads,
    head_dim) of zeros per block}. Callable on an unbound model (needs no parameters)."""
    head_dim = check_config(self.dim, self.num_heads, self.num_kv_heads)
    shape = (batch, max_len, self.num_kv_heads, head_dim)
    layer = lambda: {"keys": jnp.zeros(shape, dtype), "values": jnp.zeros(shape, dtype)}
    return {"segment_ids": jnp.zeros((batch, max_len), jnp.int32),
            "layers": tuple(layer() for _ in range(self.depth))}

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, segment_ids: Optional[jnp.ndarray] = None,
               positions: Optional[jnp.ndarray] = None, train: bool = False,
               cache: Optional[dict] = None, cache_index=None):
    """Logits (B, L, V); with a `cache` (see init_cache) the chunk goes to cache columns
    [cache_index, cache_index + L) (cache_index may be traced) and the result is
    (logits, new_cache). With a cache, `positions` must be given (they continue the prompt's)."""
    del train  # no dropout; kept for the models' common signature
    if segment_ids is None:
      segment_ids = jnp.ones(tokens.shape, jnp.int32)
    if positions is None:
      if cache is not None:
        raise ValueError("positions are required with a cache (they continue the prefix's).")
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    if cache is None:
      mask = attention_mask(segment_ids)
    else:
      index = jnp.asarray(0 if cache_index is None else cache_index, jnp.int32)
      key_segments = lax.dynamic_update_slice(
          cache["segment_ids"], segment_ids.astype(jnp.int32), (jnp.zeros_like(index), index))
      mask = cache_mask(segment_ids, key_segments, index)
      layers = []
    # Std 1/sqrt(dim): tied logits (unit-RMS features · embedding rows) start with unit scale,
    # like the untied Dense's lecun init; the input side is RMS-normalised anyway.
    embed = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype,
                     embedding_init=nn.initializers.normal(self.dim ** -0.5))
    x = embed(tokens)
    for i in range(self.depth):
      block = Block(self.num_heads, self.num_kv_heads, self.mlp_dim, self.rope_base, self.dtype)
      if cache is None:
        x = block(x, positions, mask)
      else:
        x, kv = block(x, positions, mask, cache["layers"][i], index)
        layers.append(kv)
      tap(self, f"block{i + 1}", x)
    x = nn.RMSNorm(RMS_EPSILON, dtype=self.dtype)(x)
    tap(self, "penultimate", x)
    if self.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype)(x)
    if cache is None:
      return logits
    return logits, {"segment_ids": key_segments, "layers": tuple(layers)}


def param_count(vocab_size: int, dim: int, depth: int, num_heads: int, num_kv_heads: int,
                mlp_dim: int, tie_embeddings: bool = False, **_) -> int:
  """Parameters of `DecoderLM(...)` by formula (extra keyword arguments, e.g. rope_base, ignored):
  embedding V·d, per layer 2d (norms) + 2d² (W_q, W_o) + 2·d·kv·d_head (W_k, W_v) + 3·d·m
  (SwiGLU), final norm d, and d·V for an untied unembedding."""
  head_dim = check_config(dim, num_heads, num_kv_heads)
  layer = 2 * dim + 2 * dim * dim + 2 * dim * num_kv_heads * head_dim + 3 * dim * mlp_dim
  return vocab_size * dim + depth * layer + dim + (0 if tie_embeddings else dim * vocab_size)


def flops_per_token(vocab_size: int, dim: int, depth: int, num_heads: int, num_kv_heads: int,
                    mlp_dim: int, context_length: float, **_) -> float:
  """Forward-pass FLOPs per token (a multiply-add = 2 FLOPs; training ≈ 3× this):

    2 · (matmul weights a token passes through) + depth · 2 · 2 · context_length · dim

  The weights are, per layer, W_q, W_k, W_v, W_o and the three SwiGLU matrices, plus the output
  projection d·V (also when tied: the transposed embedding is still a matmul); the embedding
  lookup, norms, RoPE and softmax are not counted. The second term is QKᵀ and AV for one query
  against `context_length` keys over all heads (num_heads · d_head = dim). Pass the sequence
  length L for the full-attention bound, or (L + 1) / 2 for the causal average."""
  head_dim = check_config(dim, num_heads, num_kv_heads)
  layer = 2 * dim * dim + 2 * dim * num_kv_heads * head_dim + 3 * dim * mlp_dim
  matmul = depth * layer + dim * vocab_size
  return 2 * matmul + depth * 2 * 2 * context_length * dim


# Named sizes for configs (`dict(name="decoder", **SIZES["1b"])`), parameter counts by param_count.
# The CPU sizes run in tests and small-scale reproductions (byte vocabulary); the large ones are for
# GPU/TPU full-scale configs (a 32k-token tokenizer.json; Llama-like shapes, GQA, tied embeddings).
SIZES = {
    "tiny": dict(vocab_size=259, dim=48, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=128),     # 75,792
    "small": dict(vocab_size=259, dim=128, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=352),   # 804,736
    "100m": dict(vocab_size=32000, dim=768, depth=12, num_heads=12, num_kv_heads=4, mlp_dim=2048,
                 tie_embeddings=True),                                                           # 100.1 M
    "1b": dict(vocab_size=32000, dim=2048, depth=16, num_heads=32, num_kv_heads=8, mlp_dim=8192,
               tie_embeddings=True),                                                             # 1.04 B
    "3b": dict(vocab_size=32000, dim=3072, depth=28, num_heads=24, num_kv_heads=8, mlp_dim=8192,
               tie_embeddings=True),                                                             # 2.92 B
}
