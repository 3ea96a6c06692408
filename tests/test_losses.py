"""Losses and methods against float64 numpy references written here (not calling research code).

Every check runs twice: in float32 (JAX's default) against the float64 reference at a float32
tolerance, and inside `jax.enable_x64` at a float64 tolerance.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research import config as config_lib
from research import losses, methods
from research.errors import UserError

NUM_CLASSES = 10
TEMPERATURES = (1.0, 2.0, 5.0, 20.0)
ALPHAS = (0.0, 0.5, 0.9, 1.0)


# ----------------------------------------------------------------------------- float64 references

def ref_log_softmax(x):
  x = np.asarray(x, np.float64)
  shifted = x - x.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def ref_softmax(x):
  return np.exp(ref_log_softmax(x))


def ref_cross_entropy(logits, labels):
  return -ref_log_softmax(logits)[np.arange(len(labels)), labels]


def ref_soft_cross_entropy(logits, probs):
  return -(np.asarray(probs, np.float64) * ref_log_softmax(logits)).sum(axis=-1)


def ref_kl(teacher, student, temperature):
  log_p = ref_log_softmax(np.asarray(teacher, np.float64) / temperature)
  log_q = ref_log_softmax(np.asarray(student, np.float64) / temperature)
  return (np.exp(log_p) * (log_p - log_q)).sum(axis=-1)


def ref_hinton(student, teacher, labels, temperature, alpha):
  return ((1 - alpha) * ref_cross_entropy(student, labels)
          + alpha * temperature**2 * ref_kl(teacher, student, temperature))


def ref_hinton_grad(student, teacher, labels, temperature, alpha):
  """(1−α)(softmax(s) − onehot(y)) + α·T·(softmax(s/T) − softmax(t/T)), per example."""
  onehot = np.eye(student.shape[-1])[labels]
  return ((1 - alpha) * (ref_softmax(student) - onehot)
          + alpha * temperature * (ref_softmax(student / temperature) - ref_softmax(teacher / temperature)))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(params=[False, True], ids=["f32", "f64"])
def precision(request):
  """Yields (dtype, rtol, atol) and runs the test with x64 on or off."""
  with jax.enable_x64(request.param):
    if request.param:
      yield jnp.float64, 1e-12, 1e-12
    else:
      yield jnp.float32, 2e-6, 2e-6


def logits(seed, shape=(32, NUM_CLASSES), scale=3.0):
  return scale * np.random.default_rng(seed).standard_normal(shape)


def labels_for(seed, n=32):
  return np.random.default_rng(seed).integers(0, NUM_CLASSES, size=n)


def close(actual, expected, rtol, atol):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected, rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- values

def test_cross_entropy_matches_reference(precision):
  dtype, rtol, atol = precision
  s, y = logits(0), labels_for(1)
  out = losses.cross_entropy(jnp.asarray(s, dtype), jnp.asarray(y))
  assert out.shape == (32,) and out.dtype == dtype
  close(out, ref_cross_entropy(s, y), rtol, atol)


def test_cross_entropy_of_uniform_logits_is_log_num_classes():
  out = losses.cross_entropy(jnp.full((4, NUM_CLASSES), 7.0), jnp.arange(4))
  np.testing.assert_allclose(out, np.full(4, np.log(NUM_CLASSES)), rtol=1e-6)


def test_cross_entropy_is_stable_for_huge_logits():
  s = np.array([[1000.0, 0.0, -1000.0]])
  out = losses.cross_entropy(jnp.asarray(s, jnp.float32), jnp.asarray([1]))
  assert np.isfinite(out).all()
  np.testing.assert_allclose(out, [1000.0], rtol=1e-6)


def test_soft_cross_entropy_matches_reference(precision):
  dtype, rtol, atol = precision
  s, p = logits(2), ref_softmax(logits(3))
  out = losses.soft_cross_entropy(jnp.asarray(s, dtype), jnp.asarray(p, dtype))
  close(out, ref_soft_cross_entropy(s, p), rtol, atol)


def test_soft_cross_entropy_with_one_hot_targets_is_cross_entropy(precision):
  dtype, rtol, atol = precision
  s, y = logits(4), labels_for(5)
  onehot = np.eye(NUM_CLASSES)[y]
  out = losses.soft_cross_entropy(jnp.asarray(s, dtype), jnp.asarray(onehot, dtype))
  close(out, ref_cross_entropy(s, y), rtol, atol)


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kl_divergence_matches_reference(precision, temperature):
  dtype, rtol, atol = precision
  t, s = logits(6), logits(7)
  out = losses.kl_divergence(jnp.asarray(t, dtype), jnp.asarray(s, dtype), temperature)
  assert out.shape == (32,)
  close(out, ref_kl(t, s, temperature), rtol, atol)


def test_kl_divergence_is_not_symmetric():
  """Guards the argument order: KL(p_teacher ‖ q_student), not the reverse."""
  t, s = logits(8), logits(9)
  forward = losses.kl_divergence(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32), 2.0)
  close(forward, ref_kl(t, s, 2.0), 2e-6, 2e-6)
  assert np.abs(ref_kl(t, s, 2.0) - ref_kl(s, t, 2.0)).max() > 1e-2


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kl_divergence_is_zero_for_equal_logits(precision, temperature):
  dtype, _, _ = precision
  x = jnp.asarray(logits(10), dtype)
  np.testing.assert_array_equal(losses.kl_divergence(x, x, temperature), np.zeros(32))


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kl_divergence_is_nonnegative(temperature):
  for seed, scale in enumerate((0.01, 1.0, 10.0, 100.0)):
    t = logits(seed, (256, NUM_CLASSES), scale)
    s = logits(seed + 100, (256, NUM_CLASSES), scale)
    out = np.asarray(losses.kl_divergence(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32),
                                          temperature))
    assert np.isfinite(out).all()
    assert out.min() >= -1e-6, (scale, out.min())
    assert out.max() > 0


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_kl_divergence_is_invariant_to_constant_shift(precision, temperature):
  """softmax(x + c) = softmax(x): shifting either logit row by its own constant changes nothing."""
  dtype, rtol, atol = precision
  t, s = logits(11), logits(12)
  shift_t = np.random.default_rng(13).uniform(-50, 50, size=(32, 1))
  shift_s = np.random.default_rng(14).uniform(-50, 50, size=(32, 1))
  base = losses.kl_divergence(jnp.asarray(t, dtype), jnp.asarray(s, dtype), temperature)
  shifted = losses.kl_divergence(jnp.asarray(t + shift_t, dtype), jnp.asarray(s + shift_s, dtype),
                                 temperature)
  # Shifted float32 logits lose ~|shift|·eps of precision, so compare at a looser absolute tolerance.
  close(shifted, np.asarray(base, np.float64), 0, 1e-4 if dtype == jnp.float32 else 1e-10)
  close(shifted, ref_kl(t, s, temperature), 0, 1e-4 if dtype == jnp.float32 else 1e-10)


def test_kl_divergence_is_soft_cross_entropy_minus_entropy(precision):
  dtype, rtol, atol = precision
  t, s, temperature = logits(15), logits(16), 4.0
  p = ref_softmax(t / temperature)
  entropy = -(p * np.log(p)).sum(-1)
  soft_ce = losses.soft_cross_entropy(jnp.asarray(s / temperature, dtype), jnp.asarray(p, dtype))
  kl = losses.kl_divergence(jnp.asarray(t, dtype), jnp.asarray(s, dtype), temperature)
  close(np.asarray(soft_ce, np.float64) - entropy, np.asarray(kl, np.float64), 0, 10 * atol)


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", (1.0, 20.0))
def test_hinton_kd_matches_reference(precision, alpha, temperature):
  dtype, rtol, atol = precision
  s, t, y = logits(17), logits(18), labels_for(19)
  out = losses.hinton_kd(jnp.asarray(s, dtype), jnp.asarray(t, dtype), jnp.asarray(y),
                         temperature, alpha)
  assert out.shape == (32,)
  # T² ≈ 400 multiplies the KL's float32 rounding, hence the scaled absolute tolerance.
  close(out, ref_hinton(s, t, y, temperature, alpha), rtol, atol * temperature**2)


def test_hinton_kd_limits():
  """α = 0 is plain cross-entropy; α = 1 is T²·KL and ignores the labels."""
  s, t = jnp.asarray(logits(20), jnp.float32), jnp.asarray(logits(21), jnp.float32)
  y1, y2 = jnp.asarray(labels_for(22)), jnp.asarray(labels_for(23))
  np.testing.assert_array_equal(losses.hinton_kd(s, t, y1, 5.0, 0.0), losses.cross_entropy(s, y1))
  np.testing.assert_array_equal(losses.hinton_kd(s, t, y1, 5.0, 1.0), losses.hinton_kd(s, t, y2, 5.0, 1.0))
  assert not np.array_equal(losses.hinton_kd(s, t, y1, 5.0, 0.5), losses.hinton_kd(s, t, y2, 5.0, 0.5))


# ----------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("temperature", (1.0, 3.0, 20.0))
def test_hinton_kd_student_gradient_matches_analytic(precision, alpha, temperature):
  dtype, rtol, atol = precision
  s, t, y = logits(24), logits(25), labels_for(26)
  loss = lambda x: jnp.sum(losses.hinton_kd(x, jnp.asarray(t, dtype), jnp.asarray(y), temperature, alpha))
  grad = jax.grad(loss)(jnp.asarray(s, dtype))
  close(grad, ref_hinton_grad(s, t, y, temperature, alpha), 10 * rtol, 10 * atol * temperature)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_hinton_kd_has_no_teacher_gradient(alpha):
  s, t, y = (jnp.asarray(logits(27), jnp.float32), jnp.asarray(logits(28), jnp.float32),
             jnp.asarray(labels_for(29)))
  grad_t = jax.grad(lambda x: jnp.sum(losses.hinton_kd(s, x, y, 4.0, alpha)))(t)
  np.testing.assert_array_equal(grad_t, np.zeros_like(t))
  # ...whereas the raw KL does depend on the teacher logits (so the zero above is the stop_gradient).
  grad_kl = jax.grad(lambda x: jnp.sum(losses.kl_divergence(x, s, 4.0)))(t)
  assert np.abs(np.asarray(grad_kl)).max() > 1e-3


def _small_spread_logits():
  rng = np.random.default_rng(30)
  s, t = rng.standard_normal((64, NUM_CLASSES)), rng.standard_normal((64, NUM_CLASSES))
  return s - s.mean(-1, keepdims=True), t - t.mean(-1, keepdims=True)


def _soft_grad(s, t, temperature, scale):
  loss = lambda x: jnp.sum(scale * losses.kl_divergence(jnp.asarray(t, jnp.float32), x, temperature))
  return np.asarray(jax.grad(loss)(jnp.asarray(s, jnp.float32)), np.float64)


def test_soft_target_gradient_is_temperature_invariant_with_t_squared():
  """Hand derivation: ∂KL(p_T‖q_T)/∂s = (q_T − p_T)/T, so ∂(T²·KL)/∂s = T·(q_T − p_T); for |z| ≪ T,
  softmax(z/T) ≈ (1 + (z − z̄)/T)/N, hence T·(q_T − p_T) → ((s − s̄) − (t − t̄))/N, free of T
  (the error is O(1/T))."""
  s, t = _small_spread_logits()
  diff = s - t
  limit = (diff - diff.mean(-1, keepdims=True)) / NUM_CLASSES
  norms = {}
  for temperature in (10.0, 20.0, 50.0):
    grad = _soft_grad(s, t, temperature, temperature**2)
    norms[temperature] = np.linalg.norm(grad)
    assert np.linalg.norm(grad - limit) / np.linalg.norm(limit) < 1.0 / temperature, temperature
  assert max(norms.values()) / min(norms.values()) < 1.03, norms


def test_soft_target_gradient_without_t_squared_shrinks_like_inverse_t_squared():
  """Without the T² factor the gradient is (q_T − p_T)/T ≈ (Δ − Δ̄)/(N·T²)."""
  s, t = _small_spread_logits()
  norms = {temperature: np.linalg.norm(_soft_grad(s, t, temperature, 1.0))
           for temperature in (10.0, 20.0, 50.0)}
  np.testing.assert_allclose(norms[10.0] / norms[20.0], 4.0, rtol=0.03)
  np.testing.assert_allclose(norms[10.0] / norms[50.0], 25.0, rtol=0.03)


# ----------------------------------------------------------------------------- methods

def test_methods_build_and_losses():
  """The method's loss is the mean over the batch of the per-example loss functions above."""
  s, t, y = (jnp.asarray(logits(31), jnp.float32), jnp.asarray(logits(32), jnp.float32),
             jnp.asarray(labels_for(33)))
  context = {"labels": y, "step": 0}
  supervised = build_method(name="supervised")
  assert not supervised.needs_teacher
  loss, _, terms = supervised.loss({}, {}, {"logits": s}, None, context)
  close(loss, np.mean(ref_cross_entropy(np.asarray(s), np.asarray(y))), 2e-6, 2e-6)
  assert set(terms) == {"ce"}
  kd = build_method(name="hinton_kd", temperature=20.0, ce_weight=0.1, kd_weight=0.9)
  assert kd.needs_teacher and (kd.temperature, kd.ce_weight, kd.kd_weight) == (20.0, 0.1, 0.9)
  loss, _, terms = kd.loss({}, {}, {"logits": s}, {"logits": t}, context)
  close(loss, np.mean(ref_hinton(np.asarray(s), np.asarray(t), np.asarray(y), 20.0, 0.9)), 2e-6, 2e-6 * 400)
  assert set(terms) == {"ce", "kd"}


@pytest.mark.parametrize("settings", [
    dict(name="hinton_kd", temperature=0.0), dict(name="hinton_kd", temperature=-1.0),
    dict(name="hinton_kd", kd_weight=-0.1), dict(name="hinton_kd", ce_weight=-1.0),
    dict(name="no_such_method")])
def test_methods_build_rejects_bad_settings(settings):
  with pytest.raises(UserError):
    build_method(**settings)


def build_method(**settings):
  """methods.build on the complete method section (defaults overridden by `settings`)."""
  section = config_lib.method_defaults()
  section.update(settings)
  return methods.build(section)
