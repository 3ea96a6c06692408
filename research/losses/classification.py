"""Classification losses as small pure functions of logits. All return per-example values.

Reductions (mean over the batch, over devices) belong to the caller, so the same function
serves the training step, evaluation and tests.
"""
import jax
import jax.numpy as jnp


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """−log softmax(logits)[label] per example; `labels` are integer class ids."""
  log_probs = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def soft_cross_entropy(logits: jnp.ndarray, target_probs: jnp.ndarray) -> jnp.ndarray:
  """−Σ_k p_k log softmax(logits)_k per example, for a target distribution p."""
  return -jnp.sum(target_probs * jax.nn.log_softmax(logits), axis=-1)


def kl_divergence(teacher_logits: jnp.ndarray, student_logits: jnp.ndarray,
                  temperature: float = 1.0) -> jnp.ndarray:
  """KL(softmax(t/T) ‖ softmax(s/T)) per example.

  Written as Σ p (log p − log q) with both logs from log_softmax, so it is exactly 0 when the
  logits agree and never negative beyond rounding.
  """
  teacher_log_probs = jax.nn.log_softmax(teacher_logits / temperature)
  student_log_probs = jax.nn.log_softmax(student_logits / temperature)
  return jnp.sum(jnp.exp(teacher_log_probs) * (teacher_log_probs - student_log_probs), axis=-1)


def hinton_kd(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, labels: jnp.ndarray,
              temperature: float, alpha: float) -> jnp.ndarray:
  """Hinton et al. 2015: (1−α)·CE(y, s) + α·T²·KL(softmax(t/T) ‖ softmax(s/T)) per example.

  The T² factor keeps the soft term's gradient magnitude roughly independent of T (its
  gradient w.r.t. the logits is (q_T − p_T)/T, times T² → T·(q_T − p_T) ≈ (s − t)/N for large T).
  The teacher logits are treated as constants (stop_gradient). With α = 1 the labels are unused.
  """
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  soft = temperature**2 * kl_divergence(teacher_logits, student_logits, temperature)
  if alpha == 1.0:
    return soft
  return (1.0 - alpha) * cross_entropy(student_logits, labels) + alpha * soft


def decoupled_kd_terms(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, labels: jnp.ndarray,
                       temperature: float = 1.0):
  """Zhao et al. 2022 (DKD): per-example (TCKD, NCKD, teacher's non-target mass 1 − p_t), at T.

  TCKD is the KL between the binary (target, rest) distributions; NCKD the KL between the
  distributions over the non-target classes alone. Exactly: KL(p ‖ q) = TCKD + (1 − p_t)·NCKD.
  The target is masked out of NCKD by shifting its logit down by 1e4 (its probability underflows
  to exactly 0) rather than to −inf, which would put NaNs into the gradients.
  """
  onehot = jax.nn.one_hot(labels, student_logits.shape[-1], dtype=student_logits.dtype)
  t_log = jax.nn.log_softmax(teacher_logits / temperature)
  s_log = jax.nn.log_softmax(student_logits / temperature)
  t_target, s_target = jnp.sum(t_log * onehot, -1), jnp.sum(s_log * onehot, -1)
  # log(1 − p_t) as logsumexp over the non-target classes: accurate when p_t is close to 1.
  t_rest = jax.nn.logsumexp(t_log - 1e4 * onehot, axis=-1)
  s_rest = jax.nn.logsumexp(s_log - 1e4 * onehot, axis=-1)
  tckd = (jnp.exp(t_target) * (t_target - s_target) + jnp.exp(t_rest) * (t_rest - s_rest))
  t_part = jax.nn.log_softmax(teacher_logits / temperature - 1e4 * onehot)
  s_part = jax.nn.log_softmax(student_logits / temperature - 1e4 * onehot)
  nckd = jnp.sum(jnp.exp(t_part) * (t_part - s_part), axis=-1)
  return tckd, nckd, jnp.exp(t_rest)


def dkd(student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, labels: jnp.ndarray,
        temperature: float, alpha: float, beta: float) -> jnp.ndarray:
  """DKD = T²·(α·TCKD + β·NCKD) per example, teacher logits held fixed (Zhao et al. 2022, eq. 7)."""
  tckd, nckd, _ = decoupled_kd_terms(student_logits, jax.lax.stop_gradient(teacher_logits), labels,
                                     temperature)
  return temperature**2 * (alpha * tckd + beta * nckd)
