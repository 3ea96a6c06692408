"""Decoupled KD (Zhao et al. 2022) against float64 numpy references written from the paper's definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import losses

TEMPERATURES = (1.0, 4.0, 20.0)


def ref_terms(student, teacher, labels, temperature):
  """TCKD, NCKD and 1 − p_t from the definitions: binary (target, rest) and renormalised non-target probs."""
  def probs(z):
    z = np.asarray(z, np.float64) / temperature
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)
  p, q = probs(teacher), probs(student)
  rows = np.arange(len(labels))
  p_t, q_t = p[rows, labels], q[rows, labels]
  tckd = p_t * np.log(p_t / q_t) + (1 - p_t) * np.log((1 - p_t) / (1 - q_t))
  mask = np.ones_like(p, bool)
  mask[rows, labels] = False
  p_hat = np.where(mask, p, 0) / (1 - p_t)[:, None]
  q_hat = np.where(mask, q, 0) / (1 - q_t)[:, None]
  nckd = np.sum(np.where(mask, p_hat * np.log(np.where(mask, p_hat, 1) / np.where(mask, q_hat, 1)), 0), -1)
  kl = np.sum(p * np.log(p / q), -1)
  return tckd, nckd, 1 - p_t, kl


def _inputs(seed, n=64, k=10, scale=3.0):
  rng = np.random.default_rng(seed)
  return scale * rng.standard_normal((n, k)), scale * rng.standard_normal((n, k)), rng.integers(0, k, n)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_terms_match_float64_reference(temperature):
  student, teacher, labels = _inputs(0)
  with jax.enable_x64(True):
    tckd, nckd, rest = losses.decoupled_kd_terms(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels),
                                                 temperature)
  ref_tckd, ref_nckd, ref_rest, _ = ref_terms(student, teacher, labels, temperature)
  np.testing.assert_allclose(tckd, ref_tckd, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(nckd, ref_nckd, rtol=1e-10, atol=1e-12)
  np.testing.assert_allclose(rest, ref_rest, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("x64,tol", [(True, 1e-12), (False, 2e-5)])
def test_kd_equals_tckd_plus_weighted_nckd_per_sample(temperature, x64, tol):
  """The paper's identity KD = TCKD + (1 − p_t)·NCKD holds for every example, not just on average."""
  student, teacher, labels = _inputs(1, scale=4.0)
  with jax.enable_x64(x64):
    s, t, y = jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels)
    tckd, nckd, rest = losses.decoupled_kd_terms(s, t, y, temperature)
    kd = losses.kl_divergence(t, s, temperature)
  np.testing.assert_allclose(np.asarray(tckd + rest * nckd), np.asarray(kd), rtol=tol, atol=tol)


def test_dkd_weights_and_temperature_factor():
  student, teacher, labels = _inputs(2)
  ref_tckd, ref_nckd, _, _ = ref_terms(student, teacher, labels, 4.0)
  with jax.enable_x64(True):
    got = losses.dkd(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(labels), 4.0, 1.0, 8.0)
  np.testing.assert_allclose(got, 16.0 * (ref_tckd + 8.0 * ref_nckd), rtol=1e-10)


def test_gradients_are_finite_and_teacher_gets_none():
  """The masked target must not leak NaNs into gradients, even for a confident (p_t ≈ 1) teacher."""
  student, teacher, labels = _inputs(3)
  teacher[np.arange(len(labels)), labels] += 30.0  # p_t within 1e-13 of 1 at T = 1
  s, t, y = jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), jnp.asarray(labels)
  loss = lambda s, t: jnp.sum(losses.dkd(s, t, y, 1.0, 1.0, 8.0))
  grad_s, grad_t = jax.grad(loss, argnums=(0, 1))(s, t)
  assert np.all(np.isfinite(grad_s)) and np.any(grad_s != 0)
  assert np.all(grad_t == 0)


def test_zero_when_student_equals_teacher():
  _, teacher, labels = _inputs(4)
  tckd, nckd, _ = losses.decoupled_kd_terms(jnp.asarray(teacher), jnp.asarray(teacher), jnp.asarray(labels), 4.0)
  np.testing.assert_allclose(tckd, 0, atol=1e-6)
  np.testing.assert_allclose(nckd, 0, atol=1e-6)
