"""CRD's NCE pieces against float64 numpy references written with explicit loops."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from research.losses import contrastive as crd


def ref_l2_normalize(x):
  out = np.empty_like(x)
  for i in range(len(x)):
    out[i] = x[i] / max(math.sqrt(sum(v * v for v in x[i])), 1e-12)
  return out


def ref_nce_scores(anchor, candidates, t):
  b, k1, _ = candidates.shape
  return np.array([[math.exp(anchor[i] @ candidates[i, j] / t) for j in range(k1)] for i in range(b)])


def ref_crd_nce_loss(scores, z, n, eps=1e-7):
  b, k1 = scores.shape
  k, pn, total = k1 - 1, 1.0 / n, 0.0
  for i in range(b):
    p0 = scores[i, 0] / z
    total += math.log(p0 / (p0 + k * pn + eps))
    for j in range(1, k1):
      total += math.log(k * pn / (scores[i, j] / z + k * pn + eps))
  return -total / b


def ref_memory_update(bank, indices, values, m):
  bank = bank.copy()
  for i, idx in enumerate(indices):
    row = m * bank[idx] + (1 - m) * values[i]
    bank[idx] = row / np.linalg.norm(row)
  return bank


def _x64(fn, *args, **kwargs):
  """fn under float64, jitted with the keyword arguments fixed (one compile beats eager op-by-op)."""
  with jax.enable_x64(True):
    return np.asarray(jax.jit(functools.partial(fn, **kwargs))(*[jnp.asarray(a) for a in args]))


RNG = np.random.default_rng(0)
B, K, D, N = 5, 6, 4, 11


def test_l2_normalize_matches_reference_and_is_safe_at_zero():
  x = RNG.standard_normal((B, D))
  np.testing.assert_allclose(_x64(crd.l2_normalize, x), ref_l2_normalize(x), rtol=1e-12)
  grad = jax.jit(jax.grad(lambda v: jnp.sum(crd.l2_normalize(v))))(jnp.zeros((2, 3)))
  assert np.all(np.isfinite(grad))


def test_nce_scores_match_reference():
  anchor, candidates = RNG.standard_normal((B, D)), RNG.standard_normal((B, K + 1, D))
  np.testing.assert_allclose(_x64(crd.nce_scores, anchor, candidates, temperature=0.07),
                             ref_nce_scores(anchor, candidates, 0.07), rtol=1e-10)


def test_normalization_constant_is_mean_times_n():
  scores = np.exp(RNG.standard_normal((B, K + 1)))
  expected = sum(scores.ravel()) / scores.size * N
  np.testing.assert_allclose(_x64(crd.normalization_constant, scores, num_data=N), expected, rtol=1e-12)


def test_crd_nce_loss_matches_reference():
  scores = np.exp(RNG.standard_normal((B, K + 1)) / 0.5)
  z = scores.mean() * N
  np.testing.assert_allclose(_x64(crd.crd_nce_loss, scores, z, num_data=N),
                             ref_crd_nce_loss(scores, z, N), rtol=1e-10)


def test_crd_nce_loss_hand_example():
  """One anchor, one positive, two negatives: N = 4, Z = 2, so Pn = 1/4 and K·Pn = 1/2.

  P = [2, 0.5, 1] / 2 = [1, 0.25, 0.5]:
    positive:   log(1 / (1 + 0.5))        = log(2/3)
    negatives:  log(0.5 / (0.25 + 0.5))   = log(2/3),  log(0.5 / (0.5 + 0.5)) = log(1/2)
  loss = −(2·log(2/3) + log(1/2)) = 2·log(3/2) + log 2 (eps = 1e-7 shifts it by < 1e-6).
  """
  scores = np.array([[2.0, 0.5, 1.0]])
  expected = 2 * math.log(1.5) + math.log(2.0)
  np.testing.assert_allclose(_x64(crd.crd_nce_loss, scores, 2.0, num_data=4), expected, atol=1e-6)
  np.testing.assert_allclose(_x64(crd.crd_nce_loss, scores, 2.0, num_data=4, eps=0.0), expected, rtol=1e-14)


def test_crd_nce_loss_decreases_as_the_positive_score_grows():
  scores = np.exp(RNG.standard_normal((B, K + 1)))
  z = scores.mean() * N
  values = []
  for boost in [0.5, 1.0, 2.0, 4.0, 8.0]:
    boosted = scores.copy()
    boosted[:, 0] *= boost
    values.append(float(_x64(crd.crd_nce_loss, boosted, z, num_data=N)))
  assert all(a > b for a, b in zip(values, values[1:])), values
  grad = jax.jit(jax.grad(lambda s: crd.crd_nce_loss(s, z, N)))(jnp.asarray(scores, jnp.float32))
  assert np.all(grad[:, 0] < 0) and np.all(grad[:, 1:] > 0)  # push the positive up, negatives down


def test_sample_negatives_excludes_own_index_and_is_uniform():
  n, k = 7, 64
  indices = np.arange(n, dtype=np.int32).repeat(300)  # each own index 300 times: 19 200 draws per row value
  draws = np.asarray(crd.sample_negatives(jax.random.key(0), jnp.asarray(indices), n, k))
  assert draws.dtype == np.int32 and draws.shape == (len(indices), k)
  assert draws.min() >= 0 and draws.max() < n
  assert not np.any(draws == indices[:, None])
  for own in range(n):
    counts = np.bincount(draws[indices == own].ravel(), minlength=n)
    others = np.delete(counts, own)
    expected = others.sum() / (n - 1)
    chi2 = np.sum((others - expected) ** 2 / expected)
    # 5 degrees of freedom: P(chi2 > 40) ≈ 1.5e-7, and the seed is fixed.
    assert chi2 < 40, (own, counts)


def test_memory_update_matches_reference_and_leaves_other_rows_alone():
  bank = RNG.standard_normal((N, D))
  indices = np.array([3, 0, 9], dtype=np.int32)
  values = RNG.standard_normal((3, D))
  updated = _x64(crd.memory_update, bank, indices, values, momentum=0.5)
  np.testing.assert_allclose(updated, ref_memory_update(bank, indices, values, 0.5), rtol=1e-12)
  others = np.setdiff1d(np.arange(N), indices)
  np.testing.assert_array_equal(updated[others], bank[others])  # bit-identical
  np.testing.assert_allclose(np.linalg.norm(updated[indices], axis=-1), 1.0, rtol=1e-12)
  bank32 = jnp.asarray(bank, jnp.float32)
  updated32 = np.asarray(jax.jit(crd.memory_update)(bank32, jnp.asarray(indices), jnp.asarray(values), 0.5))
  np.testing.assert_array_equal(updated32[others], np.asarray(bank32)[others])
  np.testing.assert_allclose(np.linalg.norm(updated32[indices], axis=-1), 1.0, rtol=1e-6)


def test_init_memory_range_and_scale():
  n, d = 2000, 48
  bank = np.asarray(crd.init_memory(jax.random.key(1), n, d))
  a = 1 / math.sqrt(d / 3)
  assert bank.shape == (n, d) and bank.dtype == np.float32
  assert bank.min() >= -a and bank.max() <= a
  assert bank.min() < -0.95 * a and bank.max() > 0.95 * a  # fills the interval
  # Not normalised (as RepDistiller), but variance a²/3 = 1/d per coordinate: mean squared norm ≈ 1.
  norms = np.linalg.norm(bank, axis=-1)
  assert np.std(norms) > 1e-3
  np.testing.assert_allclose(np.mean(norms**2), 1.0, atol=0.02)


def test_jit_end_to_end_step_is_finite():
  """The pieces compose under jit as a training step would use them (float32)."""
  key = jax.random.key(2)
  bank = crd.init_memory(key, N, D)
  idx = jnp.arange(B, dtype=jnp.int32)
  emb = crd.l2_normalize(jax.random.normal(key, (B, D)))

  @jax.jit
  def step(emb, bank):
    neg = crd.sample_negatives(jax.random.key(3), idx, N, K)
    cand = bank[jnp.concatenate([idx[:, None], neg], axis=1)]
    scores = crd.nce_scores(emb, cand, 0.07)
    z = crd.normalization_constant(scores, N)
    return crd.crd_nce_loss(scores, z, N), crd.memory_update(bank, idx, emb, 0.5)

  loss, new_bank = step(emb, bank)
  assert np.isfinite(float(loss)) and new_bank.shape == bank.shape
