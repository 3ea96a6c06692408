"""DistiLLM claim (a) (Ko et al. 2024): the skew KL's gradient is bounded where plain KL's explodes.

Statement tested (experiments/distillm2024/README.md), with p the teacher's and q the student's
probabilities, α ∈ (0, 1] and
  D_SKL^(α)(p, q) = KL(p ‖ αp + (1−α)q) = Σ_i p_i log(p_i / (αp_i + (1−α)q_i)),
which is research.losses.sequence.skew_forward_kl(student_logits=log q, teacher_logits=log p, alpha):

  ∂D_SKL/∂q_i = −(1−α)·p_i / (αp_i + (1−α)q_i),  so  |∂D_SKL/∂q_i| ≤ (1−α)/α  for every q_i ≥ 0,
  ∂KL(p‖q)/∂q_i = −p_i / q_i,                     which grows without bound as q_i → 0 where p_i > 0.

The partial derivatives are of D as a function of the vector q (no renormalisation), the form in which
the issue states the bound.
Everything runs in float64. The same is checked for what training actually differentiates, the
student's logits z (q = softmax z): there both are bounded.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.losses import sequence

ALPHAS = (0.1, 0.3, 0.5)
EPSILONS = tuple(10.0 ** -k for k in range(1, 13))  # q_0 from 1e-1 down to 1e-12
TEACHER = np.array([0.3, 0.25, 0.2, 0.15, 0.1])


def student(eps: float) -> np.ndarray:
  """q with q_0 = eps where the teacher has p_0 = 0.3, the rest shared in the teacher's proportions."""
  rest = TEACHER[1:] / TEACHER[1:].sum() * (1.0 - eps)
  return np.concatenate([[eps], rest])


def skew_kl_of_q(q, p, alpha):
  """KL(p ‖ αp + (1−α)q), the library's skew_forward_kl formula, written on probabilities."""
  return jnp.sum(p * (jnp.log(p) - jnp.log(alpha * p + (1 - alpha) * q)))


def kl_of_q(q, p):
  """KL(p ‖ q) on probabilities."""
  return jnp.sum(p * (jnp.log(p) - jnp.log(q)))


def skew_reverse_kl_of_q(q, p, alpha):
  """KL(q ‖ (1−α)p + αq), the library's skew_reverse_kl formula on probabilities."""
  return jnp.sum(q * (jnp.log(q) - jnp.log((1 - alpha) * p + alpha * q)))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_library_skew_kls_match_the_probability_formulas(alpha):
  """The library (on logits log q, log p) computes exactly the formulas differentiated below."""
  with jax.enable_x64(True):
    p = jnp.asarray(TEACHER)
    for eps in EPSILONS:
      q = jnp.asarray(student(eps))
      got = sequence.skew_forward_kl(jnp.log(q), jnp.log(p), alpha=alpha)
      np.testing.assert_allclose(got, skew_kl_of_q(q, p, alpha), rtol=1e-10, atol=1e-14)
      got = sequence.skew_reverse_kl(jnp.log(q), jnp.log(p), alpha=alpha)
      np.testing.assert_allclose(got, skew_reverse_kl_of_q(q, p, alpha), rtol=1e-10, atol=1e-14)
      np.testing.assert_allclose(sequence.forward_kl(jnp.log(q), jnp.log(p)), kl_of_q(q, p), rtol=1e-10,
                                 atol=1e-14)
      assert got.dtype == jnp.float64


def test_skew_kl_gradient_in_q_is_bounded_where_kl_explodes():
  with jax.enable_x64(True):
    p = jnp.asarray(TEACHER)
    kl_grad = jax.grad(kl_of_q)
    rows = []
    for eps in EPSILONS:
      q = jnp.asarray(student(eps))
      g_kl = np.asarray(kl_grad(q, p))
      np.testing.assert_allclose(g_kl, -TEACHER / np.asarray(q), rtol=1e-12)  # −p_i / q_i exactly
      row = {"q0": eps, "kl": float(np.max(np.abs(g_kl)))}
      for alpha in ALPHAS:
        g = np.asarray(jax.grad(skew_kl_of_q)(q, p, alpha))
        bound = (1 - alpha) / alpha
        np.testing.assert_allclose(g, -(1 - alpha) * TEACHER / (alpha * TEACHER + (1 - alpha) * np.asarray(q)),
                                   rtol=1e-12)
        assert np.max(np.abs(g)) <= bound * (1 + 1e-6), (eps, alpha, g)
        row[alpha] = float(np.max(np.abs(g)))
      rows.append(row)
    print("\nmax_i |dD/dq_i|   q_0   KL(p||q)   " + "   ".join(f"SKL a={a}" for a in ALPHAS))
    for row in rows:
      print(f"  {row['q0']:.0e}  {row['kl']:.3e}  " + "  ".join(f"{row[a]:.6f}" for a in ALPHAS))
    assert rows[-1]["kl"] > 1e6 and rows[-1]["kl"] == pytest.approx(0.3 / 1e-12, rel=1e-9)
    # The skew gradient approaches its bound (1−α)/α as q_0 → 0: the bound is tight, not loose.
    for alpha in ALPHAS:
      assert rows[-1][alpha] == pytest.approx((1 - alpha) / alpha, rel=1e-9)


def test_skew_reverse_kl_gradient_in_q_grows_only_logarithmically():
  """Not part of the claim, recorded so the README's statement stays true: KL(q ‖ (1−α)p + αq) has
  ∂/∂q_i = log(q_i/m_i) + 1 − αq_i/m_i (m = (1−α)p + αq), unbounded as q_i → 0 but only like log q_i,
  the same rate as plain reverse KL's log(q_i/p_i) + 1."""
  with jax.enable_x64(True):
    p = jnp.asarray(TEACHER)
    for alpha in ALPHAS:
      values = []
      for eps in EPSILONS:
        q = jnp.asarray(student(eps))
        g0 = float(jax.grad(skew_reverse_kl_of_q)(q, p, alpha)[0])
        m0 = (1 - alpha) * 0.3 + alpha * eps
        assert g0 == pytest.approx(np.log(eps / m0) + 1 - alpha * eps / m0, rel=1e-10)
        values.append(abs(g0))
      assert values[-1] < 30 and values[-1] > values[0]  # |log(1e-12 / 0.3·(1−α))| ≈ 26–27


def test_logit_gradients_are_bounded_for_both():
  """With q = softmax(z), ∂KL(p‖q)/∂z = q − p (|·| ≤ 1) and the skew's is bounded too: the
  q-parameterisation is where the two differ, not the logits training sees."""
  with jax.enable_x64(True):
    p = jnp.asarray(TEACHER)
    log_p = jnp.log(p)
    for eps in EPSILONS:
      z = jnp.log(jnp.asarray(student(eps)))
      g = jax.grad(lambda z: sequence.forward_kl(z, log_p))(z)
      np.testing.assert_allclose(g, jax.nn.softmax(z) - p, atol=1e-12)
      assert np.max(np.abs(g)) <= 1
      for alpha in ALPHAS:
        g = jax.grad(lambda z, a=alpha: sequence.skew_forward_kl(z, log_p, alpha=a))(z)
        assert np.all(np.isfinite(g)) and np.max(np.abs(g)) <= 2 * (1 - alpha) / alpha
