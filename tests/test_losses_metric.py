"""Metric-learning loss and Recall@k against float64 numpy references written with explicit loops."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.losses import metric


def normalise(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def dist(a, b):
  return math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b)))


def ref_triplet_loss(x, labels, margin):
  x = normalise(x)
  b, losses = len(x), []
  for i in range(b):
    pos = [dist(x[i], x[j]) for j in range(b) if j != i and labels[j] == labels[i]]
    neg = [dist(x[i], x[j]) for j in range(b) if labels[j] != labels[i]]
    if pos and neg:
      losses.append(max(max(pos) - min(neg) + margin, 0.0))
  return sum(losses) / len(losses) if losses else 0.0


def ref_recall_at_k(x, labels, k):
  x = normalise(x)
  hits = 0
  for i in range(len(x)):
    others = sorted((dist(x[i], x[j]), j) for j in range(len(x)) if j != i)
    hits += any(labels[j] == labels[i] for _, j in others[:k])
  return hits / len(x)


def _x64(fn, *args, **kwargs):
  """fn under float64, jitted with the keyword arguments fixed (one compile beats eager op-by-op)."""
  with jax.enable_x64(True):
    return np.asarray(jax.jit(functools.partial(fn, **kwargs))(*[jnp.asarray(a) for a in args]))


RNG = np.random.default_rng(0)


def test_pairwise_distances_match_reference():
  x = RNG.standard_normal((6, 4))
  expected = np.array([[dist(a, b) for b in x] for a in x])
  np.testing.assert_allclose(_x64(metric.pairwise_distances, x), expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("labels", [
    [0, 0, 1, 1, 2, 2, 0, 1],
    [0, 0, 1, 1, 2, 3, 0, 1],  # anchors 4 and 5 have no positive
    [3, 1, 0, 2, 1, 0, 2, 3],
], ids=["all_have_positives", "some_without_positive", "pairs"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_loss_matches_reference(labels, margin):
  x, labels = RNG.standard_normal((8, 5)), np.array(labels)
  expected = ref_triplet_loss(x, labels, margin)
  assert expected > 0
  np.testing.assert_allclose(_x64(metric.triplet_loss, x, labels, margin=margin), expected, rtol=1e-12)


def test_triplet_loss_is_zero_without_valid_anchors():
  x = RNG.standard_normal((4, 3))
  assert float(_x64(metric.triplet_loss, x, np.array([0, 1, 2, 3]))) == 0.0  # no positives
  assert float(_x64(metric.triplet_loss, x, np.array([5, 5, 5, 5]))) == 0.0  # no negatives
  grad = jax.jit(jax.grad(metric.triplet_loss))(jnp.asarray(x, jnp.float32), jnp.array([0, 1, 2, 3]))
  assert np.all(grad == 0)


def test_triplet_loss_gradient_finite_when_embeddings_coincide():
  x = RNG.standard_normal((6, 4)).astype(np.float32)
  x[3] = x[0]  # same label: hardest-positive distance can be 0
  x[4] = 2 * x[1]  # different label, same direction: distance 0 after normalisation
  labels = jnp.array([0, 1, 2, 0, 2, 1])
  loss, grad = jax.jit(jax.value_and_grad(metric.triplet_loss))(jnp.asarray(x), labels)
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  grad_d = jax.jit(jax.grad(lambda v: jnp.sum(metric.pairwise_distances(v))))(jnp.asarray(x))
  assert np.all(np.isfinite(grad_d))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_recall_at_k_matches_reference(k):
  x, labels = RNG.standard_normal((23, 3)), RNG.integers(0, 5, 23)
  expected = ref_recall_at_k(x, labels, k)
  assert 0 < expected < 1
  np.testing.assert_allclose(_x64(metric.recall_at_k, x, labels, k=k), expected, rtol=1e-12)
  # Chunks that do not divide N (23 = 4·5 + 3) give the same answer, also under jit.
  np.testing.assert_allclose(_x64(metric.recall_at_k, x, labels, k=k, chunk_size=5), expected, rtol=1e-12)
  jitted = jax.jit(metric.recall_at_k, static_argnames=("k", "chunk_size"))
  np.testing.assert_allclose(float(jitted(jnp.asarray(x, jnp.float32), jnp.asarray(labels), k=k, chunk_size=4)),
                             expected, rtol=1e-6)


def test_recall_at_1_hand_example():
  """Points (t, 1) on a line, t = 0, 1, 3, 10, labels A A B B. Normalised they sit on the unit circle
  at 0°, 45°, 71.6°, 84.3° (same order), so gaps are 45°, 26.6°, 12.7° and nearest neighbours are
  0→1 (A: hit), 1→2 (B: miss), 2→3 (B: hit), 3→2 (B: hit): Recall@1 = 3/4. Query 1's second
  neighbour is 3 (39.3° < 45°), also B, so Recall@2 is 3/4 too; with k = 3 every query hits."""
  x = np.array([[0.0, 1.0], [1.0, 1.0], [3.0, 1.0], [10.0, 1.0]])
  np.testing.assert_allclose(np.degrees(np.arctan2(x[:, 0], x[:, 1])), [0.0, 45.0, 71.565, 84.289], atol=1e-3)
  labels = np.array([0, 0, 1, 1])
  assert float(_x64(metric.recall_at_k, x, labels, k=1)) == 0.75
  assert float(_x64(metric.recall_at_k, x, labels, k=2)) == 0.75
  assert float(_x64(metric.recall_at_k, x, labels, k=3)) == 1.0


def test_recall_at_k_rejects_bad_k():
  with pytest.raises(ValueError, match="recall@k"):
    metric.recall_at_k(jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32), k=3)
