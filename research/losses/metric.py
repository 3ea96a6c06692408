"""Metric-learning loss and evaluation for the RKD embedding experiment (pure functions).

Embeddings are (B, D) with integer labels (B,). Both the triplet loss and recall@k work on
L2-normalised embeddings, so distances lie in [0, 2] and the margin has a fixed scale.
"""
import jax
import jax.numpy as jnp

from research.losses.contrastive import l2_normalize


def pairwise_distances(x: jnp.ndarray) -> jnp.ndarray:
  """Euclidean distances (B, B). Where two rows coincide (the diagonal, or duplicates) the distance
  is exactly 0 and its gradient 0 rather than the NaN of sqrt'(0)."""
  squared = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
  positive = squared > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squared, 1.0)), 0.0)


def triplet_loss(embeddings: jnp.ndarray, labels: jnp.ndarray, margin: float = 0.2) -> jnp.ndarray:
  """Batch-hard triplet loss (Hermans, Beyer & Leibe 2017) on L2-normalised embeddings.

  Per anchor: relu(d(a, hardest positive) − d(a, hardest negative) + margin), the hardest positive
  being the farthest other example of its label and the hardest negative the nearest of another
  label. Mean over anchors that have both; 0 if no anchor has. RKD's teacher (Park et al. 2019)
  used a triplet loss with distance-weighted sampling (Wu et al. 2017) instead; batch-hard is used
  here because it is simple and deterministic (no sampler RNG), and strong with P×K batches.
  """
  d = pairwise_distances(l2_normalize(embeddings))
  same = labels[:, None] == labels[None, :]
  positives = same & ~jnp.eye(labels.shape[0], dtype=bool)
  negatives = ~same
  has_positive, has_negative = jnp.any(positives, axis=1), jnp.any(negatives, axis=1)
  hardest_positive = jnp.max(jnp.where(positives, d, 0.0), axis=1)
  hardest_negative = jnp.min(jnp.where(negatives, d, jnp.inf), axis=1)
  valid = has_positive & has_negative
  hardest_negative = jnp.where(valid, hardest_negative, 0.0)
  per_anchor = jnp.where(valid, jax.nn.relu(hardest_positive - hardest_negative + margin), 0.0)
  return jnp.sum(per_anchor) / jnp.maximum(jnp.sum(valid), 1)


def recall_at_k(embeddings: jnp.ndarray, labels: jnp.ndarray, k: int = 1,
                chunk_size: int = 1024) -> jnp.ndarray:
  """Leave-one-out Recall@k: the fraction of examples whose k nearest other examples (Euclidean, on
  L2-normalised embeddings) include one of their label. A 0-d float array (jit-able; float() it).

  Queries go through in chunks of `chunk_size`, so only a (chunk, N) distance block exists at once
  (10k × 10k would otherwise be one 400 MB matrix).
  """
  x, labels = l2_normalize(jnp.asarray(embeddings)), jnp.asarray(labels)
  n = x.shape[0]
  if not 0 < k < n:
    raise ValueError(f"recall@k needs 0 < k < number of examples, got k={k} and {n} examples.")
  chunk = min(chunk_size, n)
  num_chunks = -(-n // chunk)
  padded = num_chunks * chunk
  query_index = jnp.arange(padded).reshape(num_chunks, chunk)
  squared_norms = jnp.sum(x**2, axis=-1)

  def hits(rows):
    q = x[jnp.minimum(rows, n - 1)]  # padded rows re-use the last example and are masked below
    squared = squared_norms[jnp.minimum(rows, n - 1)][:, None] + squared_norms[None, :] - 2.0 * q @ x.T
    squared = jnp.where(rows[:, None] == jnp.arange(n)[None, :], jnp.inf, squared)  # leave one out
    _, neighbours = jax.lax.top_k(-squared, k)
    query_labels = labels[jnp.minimum(rows, n - 1)]
    hit = jnp.any(labels[neighbours] == query_labels[:, None], axis=1)
    return jnp.sum(hit & (rows < n))

  return jnp.sum(jax.lax.map(hits, query_index)) / n
