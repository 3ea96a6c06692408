"""Token-level divergences between a student's and a teacher's next-token distributions.

Groundwork for language-model distillation. The per-token functions take logits [..., V] and return
one value per token [...]; `divergence` adds a token mask and the reduction to a scalar; and
`chunked_divergence` computes the same token mean from hidden states and unembedding matrices chunk by
chunk, so that neither model's full [N, V] logits exist at once (V is 32k–256k for real models).

Conventions shared by every function here:
- student first, teacher second (classification.kl_divergence takes the teacher first);
- logits are divided by the temperature T; a T² factor (Hinton et al.) is left to the caller;
- the maths runs in at least float32: bf16/f16 logits are upcast before log_softmax (float64 stays);
- the teacher side is wrapped in stop_gradient;
- each KL is Σ p·(log p − log q) with both logs from log_softmax, and the per-token value is clamped
  at 0: rounding can make the KL of nearly equal distributions come out as −1e-9, and a negative
  "divergence" is a reward the optimiser would chase. Terms with p = 0 (e.g. −inf logits on padded
  vocabulary entries) count as 0, as the limit p·log p → 0 says.
"""
import math

import jax
import jax.numpy as jnp

NAMES = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")
REDUCTIONS = ("token", "sequence")


def _log_probs(student_logits, teacher_logits, temperature):
  """(log p_s, log p_t) at temperature T, in at least float32, teacher held fixed."""
  teacher_logits = jax.lax.stop_gradient(teacher_logits)
  dtype = jnp.promote_types(jnp.result_type(student_logits, teacher_logits), jnp.float32)
  log_ps = jax.nn.log_softmax(jnp.asarray(student_logits, dtype) / temperature, axis=-1)
  log_pt = jax.nn.log_softmax(jnp.asarray(teacher_logits, dtype) / temperature, axis=-1)
  return log_ps, log_pt


def _kl(log_p, log_q):
  """KL(p ‖ q) = Σ p·(log p − log q) per token, clamped at 0; terms with p = 0 are 0.

  The where() puts finite stand-ins into the masked terms (not just a zero result), so −inf logs
  there give neither NaN values nor NaN gradients.
  """
  p = jnp.exp(log_p)
  live = p > 0
  diff = jnp.where(live, log_p, 0) - jnp.where(live, log_q, 0)
  return jnp.maximum(jnp.sum(p * diff, axis=-1), 0)


def _log_mix(log_a, weight_a, log_b, weight_b):
  """log(w_a·a + w_b·b) from log a and log b without leaving log space; w_a + w_b = 1, so a zero weight
  leaves the other distribution exactly (no log 0)."""
  if weight_a == 0:
    return log_b
  if weight_b == 0:
    return log_a
  # Where both are −inf (padded vocabulary) logaddexp's gradient is NaN; feed it 0s there instead.
  dead = (log_a == -jnp.inf) & (log_b == -jnp.inf)
  log_a, log_b = jnp.where(dead, 0, log_a), jnp.where(dead, 0, log_b)
  return jnp.where(dead, -jnp.inf, jnp.logaddexp(log_a + math.log(weight_a), log_b + math.log(weight_b)))


def forward_kl(student_logits, teacher_logits, temperature=1.0):
  """KL(p_t ‖ p_s) per token: mode-covering, the usual KD objective."""
  log_ps, log_pt = _log_probs(student_logits, teacher_logits, temperature)
  return _kl(log_pt, log_ps)


def reverse_kl(student_logits, teacher_logits, temperature=1.0):
  """KL(p_s ‖ p_t) per token: mode-seeking (MiniLLM-style objectives)."""
  log_ps, log_pt = _log_probs(student_logits, teacher_logits, temperature)
  return _kl(log_ps, log_pt)


def jsd(student_logits, teacher_logits, beta=0.5, temperature=1.0):
  """Generalized JSD(β) of GKD (Agarwal et al. 2024), as TRL's `generalized_jsd_loss` defines it.

  With m = (1−β)·p_s + β·p_t: JSD_β = β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m); β = 0.5 is the usual JSD.
  The ends are defined as β = 0 → forward KL(p_t ‖ p_s) and β = 1 → reverse KL(p_s ‖ p_t), because
  the mixture formula itself tends to 0 at both ends (β → 0 gives m → p_s, so both terms vanish), so
  the definition jumps there. β must be a Python number in [0, 1] (it picks the branch at trace time).
  """
  if not 0 <= beta <= 1:
    raise ValueError(f"jsd: beta must be in [0, 1], got {beta}")
  log_ps, log_pt = _log_probs(student_logits, teacher_logits, temperature)
  if beta == 0:
    return _kl(log_pt, log_ps)
  if beta == 1:
    return _kl(log_ps, log_pt)
  log_m = _log_mix(log_ps, 1 - beta, log_pt, beta)
  return beta * _kl(log_pt, log_m) + (1 - beta) * _kl(log_ps, log_m)


def _check_alpha(name, alpha):
  if not 0 < alpha <= 1:
    raise ValueError(f"{name}: alpha must be in (0, 1], got {alpha}")


def skew_forward_kl(student_logits, teacher_logits, alpha=0.1, temperature=1.0):
  """Skew KL of DistiLLM (Ko et al. 2024): KL(p_t ‖ α·p_t + (1−α)·p_s) per token, α in (0, 1].

  Skewing the student towards the teacher bounds the log-ratio by log(1/α), which keeps gradients
  stable where p_s ≪ p_t; α = 1 gives KL(p_t ‖ p_t) = 0. α is a Python number.
  """
  _check_alpha("skew_forward_kl", alpha)
  log_ps, log_pt = _log_probs(student_logits, teacher_logits, temperature)
  return _kl(log_pt, _log_mix(log_pt, alpha, log_ps, 1 - alpha))


def skew_reverse_kl(student_logits, teacher_logits, alpha=0.1, temperature=1.0):
  """Skew reverse KL of DistiLLM: KL(p_s ‖ (1−α)·p_t + α·p_s) per token, α in (0, 1] (a Python number)."""
  _check_alpha("skew_reverse_kl", alpha)
  log_ps, log_pt = _log_probs(student_logits, teacher_logits, temperature)
  return _kl(log_ps, _log_mix(log_pt, 1 - alpha, log_ps, alpha))


def tvd(student_logits, teacher_logits, temperature=1.0):
  """Total variation distance ½·Σ|p_t − p_s| per token, in [0, 1]."""
  log_ps, log_pt = _log_probs(student_logits, teacher_logits, temperature)
  return 0.5 * jnp.sum(jnp.abs(jnp.exp(log_pt) - jnp.exp(log_ps)), axis=-1)


def next_token_nll(logits, tokens):
  """−log p(tokens[:, t+1] | logits[:, t]) for rows of logits (B, L, V) and tokens (B, L): (B, L−1),
  in float32 (a language model's cross-entropy per target; masking is the caller's)."""
  log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]


def per_token(name, student_logits, teacher_logits, temperature=1.0, beta=0.5, alpha=0.1):
  """The divergence called `name` (one of NAMES) per token [...]; beta is for jsd, alpha for the skews."""
  if name == "jsd":
    return jsd(student_logits, teacher_logits, beta, temperature)
  if name in ("skew_forward_kl", "skew_reverse_kl"):
    fn = skew_forward_kl if name == "skew_forward_kl" else skew_reverse_kl
    return fn(student_logits, teacher_logits, alpha, temperature)
  fns = {"forward_kl": forward_kl, "reverse_kl": reverse_kl, "tvd": tvd}
  if name not in fns:
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(NAMES)}")
  return fns[name](student_logits, teacher_logits, temperature)


def _safe_ratio(total, count):
  """total / count, and 0 where count is 0 (no NaN in the value or the gradient)."""
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0)


def reduce(values, mask=None, reduction="token"):
  """Masked mean of per-token `values` [...] with `mask` [...] of 0/1 (None: every token counts).

  "token": Σ mask·d / Σ mask, every token weighs the same (0 if there are no tokens).
  "sequence": each sequence's (leading axis) token mean, then the mean over the sequences that
  have at least one token, so short sequences weigh as much as long ones (0 if none has any).
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
  mask = jnp.ones(values.shape, values.dtype) if mask is None else jnp.asarray(mask, values.dtype)
  weighted = jnp.where(mask != 0, mask * values, 0)  # masked tokens may hold garbage (inf/NaN)
  if reduction == "token":
    return _safe_ratio(jnp.sum(weighted), jnp.sum(mask))
  rows = values.shape[0] if values.ndim else 1
  totals = jnp.sum(weighted.reshape(rows, -1), axis=1)
  counts = jnp.sum(mask.reshape(rows, -1), axis=1)
  has_tokens = counts > 0
  return _safe_ratio(jnp.sum(jnp.where(has_tokens, _safe_ratio(totals, counts), 0)),
                     jnp.sum(has_tokens.astype(values.dtype)))


def divergence(name, student_logits, teacher_logits, mask=None, temperature=1.0, beta=0.5, alpha=0.1,
               reduction="token"):
  """Scalar divergence `name` (forward_kl|reverse_kl|jsd|skew_forward_kl|skew_reverse_kl|tvd).

  Logits [..., V], mask [...] of 0/1; see `reduce` for the reductions. Unknown names or reductions
  raise ValueError listing the choices.
  """
  if reduction not in REDUCTIONS:
    raise ValueError(f"unknown reduction {reduction!r}; choose one of {', '.join(REDUCTIONS)}")
  values = per_token(name, student_logits, teacher_logits, temperature, beta, alpha)
  return reduce(values, mask, reduction)


def chunked_divergence(name, student_hidden, student_unembed, teacher_hidden, teacher_unembed, mask=None,
                       chunk_size=1024, temperature=1.0, beta=0.5, alpha=0.1):
  """Token-mean divergence of the logits hidden @ unembed, computed chunk_size tokens at a time.

  student_hidden [N, Ds] @ student_unembed [Ds, V] and teacher_hidden [N, Dt] @ teacher_unembed
  [Dt, V] (leading axes beyond one are flattened); mask [N] of 0/1 (None: all tokens). Equals
  divergence(name, hs @ Ws, ht @ Wt, mask, reduction="token"); only the "token" reduction is offered,
  since it needs just a running (Σ mask·d, Σ mask) across chunks.

  Memory: a lax.scan over chunks that computes each chunk's gradient as it goes (a custom VJP,
  `_chunked_total`), so at most a few [chunk_size, V] arrays are alive at a time instead of [N, V]
  ones, and the backward pass does no matmul over the vocabulary again. N is padded up to a multiple of chunk_size (chunk_size is
  capped at N) with mask 0. Logits are accumulated in at least float32. Gradients reach
  student_hidden and student_unembed only; the teacher's inputs are stop_gradient'ed.
  """
  if name not in NAMES:
    raise ValueError(f"unknown divergence {name!r}; choose one of {', '.join(NAMES)}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be positive, got {chunk_size}")
  teacher_hidden = jax.lax.stop_gradient(teacher_hidden)
  teacher_unembed = jax.lax.stop_gradient(teacher_unembed)
  s_h = student_hidden.reshape(-1, student_hidden.shape[-1])
  t_h = teacher_hidden.reshape(-1, teacher_hidden.shape[-1])
  n = s_h.shape[0]
  if t_h.shape[0] != n:
    raise ValueError(f"student has {n} tokens, teacher {t_h.shape[0]}")
  acc = jnp.promote_types(jnp.result_type(student_hidden, student_unembed, teacher_hidden, teacher_unembed),
                          jnp.float32)
  mask = jnp.ones((n,), acc) if mask is None else jnp.asarray(mask, acc).reshape(n)
  chunk = min(chunk_size, max(n, 1))
  pad = -n % chunk
  s_h, t_h = jnp.pad(s_h, ((0, pad), (0, 0))), jnp.pad(t_h, ((0, pad), (0, 0)))
  mask = jnp.pad(mask, (0, pad))
  chunks = (s_h.reshape(-1, chunk, s_h.shape[-1]), t_h.reshape(-1, chunk, t_h.shape[-1]),
            mask.reshape(-1, chunk))

  s_chunks, t_chunks, mask_chunks = chunks
  total = _chunked_total(name, temperature, beta, alpha, acc)(s_chunks, student_unembed, mask_chunks,
                                                              t_chunks, teacher_unembed)
  return _safe_ratio(total, jnp.sum(mask))


def _chunked_total(name, temperature, beta, alpha, acc):
  """Σ_tokens mask·d over chunks, with its gradient computed during the forward scan (custom VJP).

  Each chunk's value and its vjp w.r.t. (student chunk, student unembedding) are taken together, so
  the backward pass only scales the stored gradients by the cotangent instead of recomputing both
  models' logits (as a remat'ed scan would: 1.5× the matmuls). Stored: the gradient w.r.t. the
  student's hidden states ([N, Ds], the input's size) and the unembedding's, never [N, V].
  """

  def chunk_total(s_x, w_s, m, t_x, w_t):
    s_logits = jnp.matmul(s_x, w_s, preferred_element_type=acc)
    t_logits = jnp.matmul(t_x, w_t, preferred_element_type=acc)
    d = per_token(name, s_logits, t_logits, temperature, beta, alpha)
    return jnp.sum(jnp.where(m != 0, m * d, 0))

  def forward(s_chunks, w_s, mask_chunks, t_chunks, w_t):
    def body(dw, xs):
      s_x, m, t_x = xs
      value, vjp = jax.vjp(lambda a, b: chunk_total(a, b, m, t_x, w_t), s_x, w_s)
      ds_x, dw_s = vjp(jnp.ones_like(value))
      return dw + dw_s.astype(acc), (value, ds_x)

    dw, (values, ds) = jax.lax.scan(body, jnp.zeros(w_s.shape, acc), (s_chunks, mask_chunks, t_chunks))
    return jnp.sum(values), (ds, dw.astype(w_s.dtype))

  @jax.custom_vjp
  def total(s_chunks, w_s, mask_chunks, t_chunks, w_t):
    return forward(s_chunks, w_s, mask_chunks, t_chunks, w_t)[0]

  def backward(residuals, g):
    ds, dw = residuals
    return g * ds, g * dw, None, None, None  # mask and teacher: no gradient

  total.defvjp(forward, backward)
  return total
