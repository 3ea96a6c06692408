"""Feature losses (AT, RKD, PKT, SP) against float64 numpy references written with explicit loops."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import losses


def huber(x):
  return 0.5 * x**2 if abs(x) < 1 else abs(x) - 0.5


def ref_attention_transfer(s, t):
  def amap(f):
    a = (np.abs(f) ** 2).mean(-1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)
  return ((amap(s) - amap(t)) ** 2).mean(-1)


def ref_rkd_distance(s, t):
  b = len(s)
  def norm_dist(x):
    d = np.array([[np.linalg.norm(x[i] - x[j]) for j in range(b)] for i in range(b)])
    return d / (d.sum() / (b * (b - 1)))
  ds, dt = norm_dist(s), norm_dist(t)
  return sum(huber(ds[i, j] - dt[i, j]) for i in range(b) for j in range(b) if i != j) / (b * (b - 1))


def ref_rkd_angle(s, t):
  b = len(s)
  def cos(x, i, j, k):
    u, v = x[i] - x[j], x[k] - x[j]
    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
    return 0.0 if nu == 0 or nv == 0 else u @ v / (nu * nv)
  return np.mean([huber(cos(s, i, j, k) - cos(t, i, j, k)) for i, j, k in itertools.product(range(b), repeat=3)])


def ref_pkt(s, t, eps=1e-7):
  def kernel(x):
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    k = (x @ x.T + 1) / 2
    return k / k.sum(-1, keepdims=True)
  p, q = kernel(t), kernel(s)
  return np.mean(p * np.log((p + eps) / (q + eps)))


def ref_sp(s, t):
  def gram(f):
    f = f.reshape(len(f), -1)
    g = f @ f.T
    return g / np.linalg.norm(g, axis=-1, keepdims=True)
  return ((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2


def _x64(fn, *args):
  with jax.enable_x64(True):
    return np.asarray(fn(*[jnp.asarray(a) for a in args]))


RNG = np.random.default_rng(0)
EMB_S, EMB_T = RNG.standard_normal((7, 5)), RNG.standard_normal((7, 12))
MAP_S, MAP_T = RNG.standard_normal((4, 6, 6, 3)), RNG.standard_normal((4, 6, 6, 8))


@pytest.mark.parametrize("fn,ref,s,t", [
    (losses.attention_transfer, ref_attention_transfer, MAP_S, MAP_T),
    (losses.rkd_distance, ref_rkd_distance, EMB_S, EMB_T),
    (losses.rkd_angle, ref_rkd_angle, EMB_S, EMB_T),
    (losses.pkt, ref_pkt, EMB_S, EMB_T),
    (losses.similarity_preserving, ref_sp, MAP_S, MAP_T),
], ids=["at", "rkd_distance", "rkd_angle", "pkt", "sp"])
def test_matches_float64_reference_and_vanishes_at_the_teacher(fn, ref, s, t):
  np.testing.assert_allclose(_x64(fn, s, t), ref(s, t), rtol=1e-10, atol=1e-12)
  assert np.all(_x64(fn, s, t) > 1e-6)  # different inputs, a real loss
  np.testing.assert_allclose(_x64(fn, t, t), 0.0, atol=1e-9)


def test_invariances():
  """RKD distance ignores the embedding's scale, the angle also its translation; AT a feature map's scale."""
  scale, shift = 3.7, RNG.standard_normal(12)
  np.testing.assert_allclose(_x64(losses.rkd_distance, EMB_T * scale, EMB_T), 0.0, atol=1e-9)
  np.testing.assert_allclose(_x64(losses.rkd_angle, EMB_T * scale + shift, EMB_T), 0.0, atol=1e-9)
  np.testing.assert_allclose(_x64(losses.attention_transfer, MAP_T * scale, MAP_T), 0.0, atol=1e-12)
  np.testing.assert_allclose(_x64(losses.similarity_preserving, MAP_T * scale, MAP_T), 0.0, atol=1e-12)


def test_gradients_finite_with_duplicate_examples_and_none_to_teacher():
  """Two identical examples make a zero distance: its sqrt must not turn the gradient into NaN."""
  s = jnp.asarray(np.concatenate([EMB_S[:3], EMB_S[:1]]), jnp.float32)  # row 3 duplicates row 0
  t = jnp.asarray(EMB_T[:4], jnp.float32)
  for fn in (losses.rkd_distance, losses.rkd_angle, losses.pkt):
    grad_s, grad_t = jax.grad(lambda a, b: fn(a, b), argnums=(0, 1))(s, t)
    assert np.all(np.isfinite(grad_s)) and np.any(grad_s != 0), fn.__name__
    assert np.all(grad_t == 0), fn.__name__


def test_attention_transfer_rejects_mismatched_spatial_sizes():
  with pytest.raises(ValueError, match="spatial"):
    losses.attention_transfer(jnp.zeros((2, 4, 4, 3)), jnp.zeros((2, 8, 8, 3)))
