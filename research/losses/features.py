"""Feature-based distillation losses: attention transfer and relational losses (pure functions).

Shapes: feature maps are (B, H, W, C) (linen's NHWC); embeddings are (B, D). Attention transfer
returns one value per example; the relational losses compare examples with each other, so they
return one scalar for the batch they are given (inside the data-parallel step: the per-device batch).
"""
import jax
import jax.numpy as jnp

_EPS = 1e-12


def attention_map(features: jnp.ndarray, p: float = 2.0) -> jnp.ndarray:
  """Zagoruyko & Komodakis 2017: mean_c |A_c|^p over channels, flattened and L2-normalised: (B, H·W)."""
  maps = jnp.mean(jnp.abs(features) ** p, axis=-1).reshape(features.shape[0], -1)
  return maps / jnp.maximum(jnp.linalg.norm(maps, axis=-1, keepdims=True), _EPS)


def attention_transfer(student_features: jnp.ndarray, teacher_features: jnp.ndarray,
                       p: float = 2.0) -> jnp.ndarray:
  """Per example: mean over positions of (a_s − a_t)², a = attention_map (as in CRD's benchmark code).

  Student and teacher maps must share H×W (channels may differ); the teacher is held fixed.
  """
  if student_features.shape[1:3] != teacher_features.shape[1:3]:
    raise ValueError(f"attention transfer needs equal spatial sizes, got student {student_features.shape} "
                     f"and teacher {teacher_features.shape}.")
  diff = attention_map(student_features, p) - jax.lax.stop_gradient(attention_map(teacher_features, p))
  return jnp.mean(diff**2, axis=-1)


def _pairwise_distances(x: jnp.ndarray) -> jnp.ndarray:
  """Euclidean distances (B, B), with a zero diagonal whose gradient is 0 rather than NaN."""
  squared = jnp.sum((x[:, None, :] - x[None, :, :]) ** 2, axis=-1)
  off_diagonal = ~jnp.eye(x.shape[0], dtype=bool)
  safe = jnp.where(off_diagonal, squared, 1.0)
  return jnp.where(off_diagonal, jnp.sqrt(jnp.maximum(safe, _EPS)), 0.0)


def _huber(x: jnp.ndarray, delta: float = 1.0) -> jnp.ndarray:
  """Smooth L1 (Huber with δ = 1), as RKD uses."""
  absolute = jnp.abs(x)
  return jnp.where(absolute < delta, 0.5 * x**2 / delta, absolute - 0.5 * delta)


def rkd_distance(student: jnp.ndarray, teacher: jnp.ndarray) -> jnp.ndarray:
  """Park et al. 2019, distance-wise RKD: Huber between the pairwise distances of the student's and
  the teacher's embeddings, each divided by its mean over distinct pairs. Mean over the B(B−1) pairs."""
  b = student.shape[0]
  off_diagonal = ~jnp.eye(b, dtype=bool)

  def normalised(x):
    d = _pairwise_distances(x)
    return d / jnp.maximum(jnp.sum(d) / (b * (b - 1)), _EPS)

  diff = normalised(student) - jax.lax.stop_gradient(normalised(teacher))
  return jnp.sum(jnp.where(off_diagonal, _huber(diff), 0.0)) / (b * (b - 1))


def _angles(x: jnp.ndarray) -> jnp.ndarray:
  """cos of the angle at j between x_i and x_k, for all (i, j, k): (B, B, B)."""
  e = x[:, None, :] - x[None, :, :]  # e[i, j] = x_i − x_j
  norm = jnp.sqrt(jnp.maximum(jnp.sum(e**2, axis=-1, keepdims=True), _EPS))
  e = e / norm
  return jnp.einsum("ijd,kjd->ijk", e, e)


def rkd_angle(student: jnp.ndarray, teacher: jnp.ndarray) -> jnp.ndarray:
  """Park et al. 2019, angle-wise RKD: Huber between the cosines of all triplet angles. Mean over B³."""
  diff = _angles(student) - jax.lax.stop_gradient(_angles(teacher))
  return jnp.mean(_huber(diff))


def pkt(student: jnp.ndarray, teacher: jnp.ndarray, eps: float = 1e-7) -> jnp.ndarray:
  """Passalis & Tefas 2018: KL between the row-normalised cosine-similarity kernels ((cos + 1)/2),
  averaged over the B² entries (as in CRD's benchmark code)."""
  def kernel(x):
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), _EPS)
    k = (x @ x.T + 1.0) / 2.0
    return k / jnp.sum(k, axis=-1, keepdims=True)

  p, q = jax.lax.stop_gradient(kernel(teacher)), kernel(student)
  return jnp.mean(p * jnp.log((p + eps) / (q + eps)))


def similarity_preserving(student_features: jnp.ndarray, teacher_features: jnp.ndarray) -> jnp.ndarray:
  """Tung & Mori 2019: ‖G_s − G_t‖²_F / B², G = row-L2-normalised (B, B) Gram matrix of flattened features."""
  def gram(f):
    f = f.reshape(f.shape[0], -1)
    g = f @ f.T
    return g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), _EPS)

  b = student_features.shape[0]
  diff = gram(student_features) - jax.lax.stop_gradient(gram(teacher_features))
  return jnp.sum(diff**2) / b**2
