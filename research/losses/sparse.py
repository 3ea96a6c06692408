"""Distillation losses for teachers seen through less than their full logits (an API, a cache).

- `topk_kl` / `topk_reverse_kl`: the teacher shows its top-k tokens with log-probs (an API's
  `top_logprobs`, or research/teachers/codec.py's cache). Those k probabilities alone are not a
  distribution, and a KL over just them would let the student dump any mass on the hidden tokens for
  free. So both sides are folded into k + 1 buckets: the k visible tokens plus one TAIL bucket holding
  everything else (the teacher's tail mass is 1 − Σ p_i; the student's is its mass outside the k ids).
  The loss is then a true KL between two (k+1)-outcome distributions: ≥ 0, and 0 iff the student
  matches the teacher on every visible token and on the total hidden mass.
- `sampled_kl`: the teacher only shows the token it sampled and that token's log-prob: the same KL
  with k = 1 on the sampled token.

Conventions as in sequence.py: student first; student logits divided by `temperature` and the maths in
at least float32; the teacher side stop_gradient'ed; terms with teacher probability 0 count as 0.
The teacher's top-k log-probs are used as given (already at the API's temperature, not rescaled), and
the k ids of a position must be distinct (duplicates are the caller's bug: they double-count a token
and are masked only once from the student's tail).
"""
import math

import jax
import jax.numpy as jnp

# Floor on the teacher's bucket probabilities in the reverse KL, which is +inf wherever the teacher
# gives 0 to a bucket the student uses (e.g. a top-k that already sums to 1 after rounding). 1e-6 is
# far below the tail's own noise: each cached log-prob is ±0.001 nats, so Σ p_i is ±0.1 %.
P_FLOOR = 1e-6


def _buckets(student_logits, ids, teacher_log_probs, temperature):
  """(log q_i (..., k), log q_tail (...) or None when k == V, log p_i (..., k), p_tail (...)).

  log q_tail is the logsumexp of the student's logits with the k ids masked out, minus the logsumexp
  of all of them: finite whenever k < V and the logits are finite, however small the mass.
  """
  teacher_log_probs = jax.lax.stop_gradient(teacher_log_probs)
  dtype = jnp.promote_types(jnp.result_type(student_logits, teacher_log_probs), jnp.float32)
  logits = jnp.asarray(student_logits, dtype) / temperature
  log_p = jnp.asarray(teacher_log_probs, dtype)
  if ids.shape != log_p.shape or ids.shape[:-1] != logits.shape[:-1]:
    raise ValueError(f"ids {ids.shape} and teacher_log_probs {log_p.shape} must both be the student "
                     f"logits' leading shape {logits.shape[:-1]} plus k")
  vocab, k = logits.shape[-1], ids.shape[-1]
  log_z = jax.nn.logsumexp(logits, axis=-1)
  log_q = jnp.take_along_axis(logits, ids, axis=-1) - log_z[..., None]
  p_tail = jnp.maximum(1 - jnp.sum(jnp.exp(log_p), axis=-1), 0)
  if k >= vocab:  # distinct ids cover the vocabulary: both tails are empty
    return log_q, None, log_p, p_tail
  flat = logits.reshape(-1, vocab)
  rows = jnp.arange(flat.shape[0])[:, None]
  outside = flat.at[rows, ids.reshape(-1, k)].set(-jnp.inf).reshape(logits.shape)
  return log_q, jax.nn.logsumexp(outside, axis=-1) - log_z, log_p, p_tail


def _term(w, log_w, log_other):
  """w·(log w − log other), 0 where w = 0, with finite stand-ins so −inf logs give no NaN gradient."""
  live = w > 0
  return jnp.where(live, w * (jnp.where(live, log_w, 0) - jnp.where(live, log_other, 0)), 0)


def topk_kl(student_logits, ids, teacher_log_probs, temperature=1.0):
  """KL(p ‖ q) (...,) over the k + 1 buckets (teacher's top-k tokens + tail), clamped at 0.

  student_logits (..., V); ids (..., k) int, distinct per position; teacher_log_probs (..., k) as given
  (p_tail = 1 − Σ p_i, clipped at 0). q = softmax(student_logits / temperature). With k == V it is the
  dense forward KL(p_t ‖ p_s).
  """
  log_q, log_q_tail, log_p, p_tail = _buckets(student_logits, ids, teacher_log_probs, temperature)
  kl = jnp.sum(_term(jnp.exp(log_p), log_p, log_q), axis=-1)
  if log_q_tail is not None:
    kl = kl + _term(p_tail, jnp.log(jnp.where(p_tail > 0, p_tail, 1)), log_q_tail)
  return jnp.maximum(kl, 0)  # rounding (or a top-k summing past 1) can dip below 0


def topk_reverse_kl(student_logits, ids, teacher_log_probs, temperature=1.0):
  """KL(q ‖ p) (...,) over the same k + 1 buckets: the mode-seeking variant, clamped at 0.

  The teacher's bucket probabilities are floored at P_FLOOR (the true value is +inf where the teacher
  gives 0 to a bucket the student uses), so the loss and its gradients stay finite.
  """
  log_q, log_q_tail, log_p, p_tail = _buckets(student_logits, ids, teacher_log_probs, temperature)
  log_floor = math.log(P_FLOOR)
  kl = jnp.sum(_term(jnp.exp(log_q), log_q, jnp.maximum(log_p, log_floor)), axis=-1)
  if log_q_tail is not None:
    kl = kl + _term(jnp.exp(log_q_tail), log_q_tail, jnp.log(jnp.maximum(p_tail, P_FLOOR)))
  return jnp.maximum(kl, 0)


def sampled_kl(student_logits, tokens, teacher_log_probs, temperature=1.0):
  """KL between the teacher's and the student's two-outcome views {the sampled token, every other
  token} (...,), for a token the teacher sampled and reported with its log-prob p.

  student_logits (..., V), tokens (...) int, teacher_log_probs (...). It is topk_kl with k = 1 on the
  sampled token: 0 iff q(token) = p(token), so, over the teacher's samples, minimised only by q = p.
  Unlike the NLL of the samples (what text alone allows: sequence-level KD), whose gradient pushes
  q(token) towards 1 whatever the teacher's confidence, it pulls q(token) towards p(token), which is
  what the reported log-prob adds.
  """
  return topk_kl(student_logits, tokens[..., None], teacher_log_probs[..., None], temperature)
