"""research/losses/sparse.py against float64 numpy references written from the definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.losses import sequence, sparse

V = 11
# Jitted once per shape: one compilation instead of one per eager op keeps the file fast.
TOPK_KL, TOPK_REVERSE_KL = jax.jit(sparse.topk_kl), jax.jit(sparse.topk_reverse_kl)


def log_softmax64(z):
  z = np.asarray(z, np.float64)
  m = z.max(-1, keepdims=True)
  return z - m - np.log(np.exp(z - m).sum(-1, keepdims=True))


def ref_topk(student, ids, teacher_log_probs, temperature=1.0, reverse=False):
  """(k+1)-bucket KL in float64: the k ids plus the tail, p_tail clipped at 0, reverse floored at P_FLOOR."""
  log_q_all = log_softmax64(np.asarray(student, np.float64) / temperature)
  q_all = np.exp(log_q_all)
  q = np.take_along_axis(q_all, ids, -1)
  p = np.exp(np.asarray(teacher_log_probs, np.float64))
  inside = np.zeros(q_all.shape, bool)
  np.put_along_axis(inside, ids, True, -1)
  if ids.shape[-1] < student.shape[-1]:
    q = np.concatenate([q, np.where(inside, 0, q_all).sum(-1, keepdims=True)], -1)
    p = np.concatenate([p, np.maximum(1 - p.sum(-1, keepdims=True), 0)], -1)
  with np.errstate(divide="ignore", invalid="ignore"):
    if reverse:
      terms = np.where(q > 0, q * (np.log(q) - np.log(np.maximum(p, sparse.P_FLOOR))), 0)
    else:
      terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0)
  return np.maximum(terms.sum(-1), 0)


def random_case(seed, batch, k, scale=2.0):
  """Student logits, k distinct random ids (not necessarily the teacher's top) and their teacher log-probs."""
  rng = np.random.default_rng(seed)
  student = (rng.normal(size=batch + (V,)) * scale).astype(np.float32)
  teacher_lp = log_softmax64(rng.normal(size=batch + (V,)) * scale)
  ids = np.argsort(rng.random(batch + (V,)), -1)[..., :k].astype(np.int32)
  return student, ids, np.take_along_axis(teacher_lp, ids, -1).astype(np.float32)


@pytest.mark.parametrize("batch", [(4,), (2, 3)])
@pytest.mark.parametrize("k", [1, 3, V])
def test_matches_float64_reference(batch, k):
  student, ids, t_lp = random_case(k + len(batch), batch, k)
  for fn, reverse in ((TOPK_KL, False), (TOPK_REVERSE_KL, True)):
    for temperature in (1.0, 2.0):
      got = fn(jnp.asarray(student), jnp.asarray(ids), jnp.asarray(t_lp), temperature)
      assert got.shape == batch and got.dtype == jnp.float32
      np.testing.assert_allclose(np.asarray(got), ref_topk(student, ids, t_lp, temperature, reverse),
                                 rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_full_vocabulary_equals_dense_forward_kl(temperature):
  rng = np.random.default_rng(5)
  student = rng.normal(size=(2, 3, V)).astype(np.float32) * 2
  teacher = rng.normal(size=(2, 3, V)).astype(np.float32) * 2
  ids = np.argsort(rng.random((2, 3, V)), -1).astype(np.int32)  # every token, shuffled
  t_lp = np.take_along_axis(log_softmax64(teacher / temperature), ids, -1).astype(np.float32)
  got = TOPK_KL(jnp.asarray(student), jnp.asarray(ids), jnp.asarray(t_lp), temperature)
  dense = sequence.per_token("forward_kl", jnp.asarray(student), jnp.asarray(teacher), temperature)
  np.testing.assert_allclose(np.asarray(got), np.asarray(dense), atol=1e-5)


def test_nonnegative_and_zero_when_buckets_agree():
  rng = np.random.default_rng(6)
  for k in (1, 4):
    student, ids, t_lp = random_case(100 + k, (500,), k, scale=3.0)
    # Quantised top-k may sum past 1 (p_tail clipped to 0): still ≥ 0.
    t_lp = np.minimum(t_lp + rng.uniform(0, 0.05, t_lp.shape), 0).astype(np.float32)
    for fn in (TOPK_KL, TOPK_REVERSE_KL):
      assert np.all(np.asarray(fn(student, jnp.asarray(ids), t_lp)) >= 0)
  # A student equal to the teacher on the k tokens and on the total tail mass, however it spreads
  # that mass over the hidden tokens, scores 0 (and a different spread of the teacher's own would too).
  _, ids, t_lp = random_case(7, (4,), 3)
  p_tail = 1 - np.exp(t_lp.astype(np.float64)).sum(-1)
  spread = rng.random((4, V)) ** 4
  np.put_along_axis(spread, ids, 0, -1)
  probs = spread / spread.sum(-1, keepdims=True) * p_tail[:, None]
  np.put_along_axis(probs, ids, np.exp(t_lp.astype(np.float64)), -1)
  student = (np.log(probs) + 3.7).astype(np.float32)  # any shift: logits, not log-probs
  for fn in (TOPK_KL, TOPK_REVERSE_KL):
    np.testing.assert_allclose(np.asarray(fn(jnp.asarray(student), jnp.asarray(ids), t_lp)), 0, atol=2e-6)
  shifted = student.copy()
  np.put_along_axis(shifted, ids[:, :1], np.take_along_axis(shifted, ids[:, :1], -1) + 1, -1)
  got = np.asarray(TOPK_KL(jnp.asarray(shifted), jnp.asarray(ids), t_lp))
  np.testing.assert_allclose(got, ref_topk(shifted, ids, t_lp), rtol=1e-5, atol=1e-6)
  assert np.all(got > 1e-4)


def edge_cases():
  """(name, student, ids, teacher log-probs): -inf teacher entry, p_tail = 0, student underflow."""
  student, ids, t_lp = random_case(8, (2, 3), 3)
  minus_inf = t_lp.copy()
  minus_inf[0, 0, 1] = -np.inf
  full = log_softmax64(np.random.default_rng(9).normal(size=(2, 3, 3))).astype(np.float32)  # Σ p = 1
  full[..., 0] += 1e-3  # and a bit past it
  extreme = np.where(np.random.default_rng(10).random(student.shape) < 0.5, -80.0, 80.0).astype(np.float32)
  extreme_ids = np.argsort(-extreme + np.arange(V) * 1e-3, -1)[..., -3:].astype(np.int32)  # on -80 logits
  return [("teacher -inf", student, ids, minus_inf), ("p_tail = 0", student, ids, full),
          ("student underflow", extreme, ids, t_lp), ("student underflow on ids", extreme, extreme_ids, t_lp)]


@pytest.mark.parametrize("case", edge_cases(), ids=lambda c: c[0])
@pytest.mark.parametrize("reverse", [False, True])
def test_finite_values_and_gradients_at_edges(case, reverse):
  _, student, ids, t_lp = case
  fn = TOPK_REVERSE_KL if reverse else TOPK_KL
  for temperature in (1.0, 0.5):
    value = fn(jnp.asarray(student), jnp.asarray(ids), jnp.asarray(t_lp), temperature)
    grad = jax.grad(lambda s: jnp.sum(fn(s, jnp.asarray(ids), jnp.asarray(t_lp), temperature)))(
        jnp.asarray(student))
    assert np.all(np.isfinite(np.asarray(value))) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(np.asarray(value), ref_topk(student, ids, t_lp, temperature, reverse),
                               rtol=1e-5, atol=1e-4)


def test_temperature_divides_only_the_student():
  student, ids, t_lp = random_case(11, (4,), 3)
  hot = TOPK_KL(jnp.asarray(student), jnp.asarray(ids), jnp.asarray(t_lp), temperature=4.0)
  scaled = TOPK_KL(jnp.asarray(student / 4), jnp.asarray(ids), jnp.asarray(t_lp))
  np.testing.assert_allclose(np.asarray(hot), np.asarray(scaled), rtol=1e-6)


def test_sampled_kl_hand_computed():
  logits = jnp.log(jnp.array([[1.0, 3.0, 0.0 + 1e-30], [2.0, 1.0, 1.0]]))  # q = [1/4, 3/4, 0], [1/2, 1/4, 1/4]
  tokens = jnp.array([1, 0])
  teacher = jnp.log(jnp.array([0.5, 0.9]))
  two_bucket = lambda p, q: p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
  np.testing.assert_allclose(np.asarray(sparse.sampled_kl(logits, tokens, teacher)),
                             [two_bucket(0.5, 0.75), two_bucket(0.9, 0.5)], rtol=1e-5)


def test_sampled_kl_pulls_the_token_to_the_teachers_probability():
  """Zero loss and zero gradient where q(token) = p(token) (the NLL would still push it to 1); the
  gradient raises q(token) below p and lowers it above."""
  rng = np.random.default_rng(12)
  student = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
  q = np.exp(log_softmax64(np.asarray(student, np.float64)))
  token = int(np.argmax(q))
  loss = lambda s, p: sparse.sampled_kl(s, jnp.asarray(token), jnp.log(jnp.float32(p)))
  assert abs(float(loss(student, q[token]))) < 1e-6
  assert np.abs(np.asarray(jax.grad(loss)(student, q[token]))).max() < 1e-5
  for p, sign in ((min(q[token] * 1.5, 0.99), -1), (q[token] / 2, 1)):
    assert sign * float(jax.grad(loss)(student, p)[token]) > 0  # descent moves q(token) towards p
