"""A Llama-style decoder-only language model (pre-norm, RMSNorm, GQA with RoPE, SwiGLU).

Inputs are token ids (B, L) with optional `segment_ids` (0 = padding; sequences packed into one
row carry distinct ids) and `positions` (default 0..L-1; restart at 0 per packed segment). A
query attends to keys that are at or before it in the row, in its segment and not padding, so
packed sequences see exactly what they would alone. A padding query sees no key: its attention
output is zero, so its logits depend only on its own token (and should be masked out of a loss).

Submodules keep flax's CamelCase names (Embed_0, Block_0, RMSNorm_0, Dense_0); lower-case names
are the feature taps: "block1".."blockN" (each block's output, (B, L, dim)) and "penultimate"
(the final RMSNorm's output, the unembedding's input, (B, L, dim)).
"""
from typing import Any, Optional

import flax.linen as nn
import jax.numpy as jnp
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


class Attention(nn.Module):
  """Grouped-query causal self-attention: num_heads query heads share num_kv_heads key/value
  heads (query head h uses kv head h // (num_heads / num_kv_heads)); no biases."""
  num_heads: int
  num_kv_heads: int
  rope_base: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask):
    batch, length, dim = x.shape
    head_dim = dim // self.num_heads
    dense = lambda n: nn.Dense(n, use_bias=False, dtype=self.dtype)
    q = dense(self.num_heads * head_dim)(x).reshape(batch, length, self.num_heads, head_dim)
    k = dense(self.num_kv_heads * head_dim)(x).reshape(batch, length, self.num_kv_heads, head_dim)
    v = dense(self.num_kv_heads * head_dim)(x).reshape(batch, length, self.num_kv_heads, head_dim)
    q, k = rope(q, positions, self.rope_base), rope(k, positions, self.rope_base)
    group = self.num_heads // self.num_kv_heads
    q = q.reshape(batch, length, self.num_kv_heads, group, head_dim)
    scores = jnp.einsum("bqkgd,bskd->bkgqs", q, k, preferred_element_type=jnp.float32)
    scores = scores / np.sqrt(head_dim)
    # mask (B, 1, L, L) → (B, 1, 1, L, L). Zeroing after the softmax changes nothing for rows
    # with a visible key and gives a padding query (no visible key) zero weights, not 0/0.
    mask = mask[:, :, None]
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
    weights = jnp.where(mask, nn.softmax(scores, axis=-1), 0).astype(self.dtype)
    out = jnp.einsum("bkgqs,bskd->bqkgd", weights, v).reshape(batch, length, dim)
    return dense(dim)(out)


class Block(nn.Module):
  """h = x + Attention(RMSNorm(x)), then h + SwiGLU(RMSNorm(h)), where
  SwiGLU(y) = (silu(y W1) ⊙ y W3) W2."""
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  rope_base: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, positions, mask):
    norm = lambda: nn.RMSNorm(RMS_EPSILON, dtype=self.dtype)
    x = x + Attention(self.num_heads, self.num_kv_heads, self.rope_base, self.dtype)(
        norm()(x), positions, mask)
    y = norm()(x)
    dense = lambda n: nn.Dense(n, use_bias=False, dtype=self.dtype)
    gate, up = dense(self.mlp_dim)(y), dense(self.mlp_dim)(y)  # W1, W3
    return x + dense(x.shape[-1])(nn.silu(gate) * up)          # W2


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

  @nn.compact
  def __call__(self, tokens: jnp.ndarray, segment_ids: Optional[jnp.ndarray] = None,
               positions: Optional[jnp.ndarray] = None, train: bool = False) -> jnp.ndarray:
    del train  # no dropout; kept for the models' common signature
    if segment_ids is None:
      segment_ids = jnp.ones(tokens.shape, jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
    mask = attention_mask(segment_ids)
    # Std 1/sqrt(dim): tied logits (unit-RMS features · embedding rows) start with unit scale,
    # like the untied Dense's lecun init; the input side is RMS-normalised anyway.
    embed = nn.Embed(self.vocab_size, self.dim, dtype=self.dtype,
                     embedding_init=nn.initializers.normal(self.dim ** -0.5))
    x = embed(tokens)
    for i in range(self.depth):
      x = Block(self.num_heads, self.num_kv_heads, self.mlp_dim, self.rope_base, self.dtype)(
          x, positions, mask)
      tap(self, f"block{i + 1}", x)
    x = nn.RMSNorm(RMS_EPSILON, dtype=self.dtype)(x)
    tap(self, "penultimate", x)
    if self.tie_embeddings:
      return embed.attend(x)
    return nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype)(x)


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
