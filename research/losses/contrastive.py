"""Contrastive representation distillation (Tian, Krishnan & Isola 2020), NCE form with a memory bank.

CRD keeps one unit-norm embedding per training example for the student and one for the teacher
(the memory banks, (N, d)). An anchor embedding from one network is scored against the other
network's bank entry for its own example (the positive) and K entries of other examples (the
negatives); a binary NCE loss separates them. The banks and the normalisation constant Z are state:
these functions are pure and the caller threads that state through training, as RepDistiller's
`ContrastMemory` does inside its module.
"""
import jax
import jax.numpy as jnp

_EPS = 1e-12


def l2_normalize(x: jnp.ndarray, eps: float = _EPS) -> jnp.ndarray:
  """x / max(‖x‖, eps) along the last axis; the gradient stays finite at x = 0."""
  squared = jnp.sum(x**2, axis=-1, keepdims=True)
  return x / jnp.sqrt(jnp.maximum(squared, eps**2))


def sample_negatives(rng: jax.Array, indices: jnp.ndarray, num_data: int,
                     num_negatives: int) -> jnp.ndarray:
  """(B, K) int32 dataset indices, uniform over the N − 1 examples other than each row's own.

  Draws from [0, N − 1) and shifts draws ≥ the own index up by one, a bijection onto the other
  items, so no rejection loop is needed. (RepDistiller samples from all N and may hit the positive.)
  """
  indices = jnp.asarray(indices, jnp.int32)
  draws = jax.random.randint(rng, (indices.shape[0], num_negatives), 0, num_data - 1, dtype=jnp.int32)
  return draws + (draws >= indices[:, None]).astype(jnp.int32)


def nce_scores(anchor: jnp.ndarray, candidates: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """(B, K+1) unnormalised scores exp(⟨anchor, candidate⟩ / τ); candidate 0 is the positive."""
  return jnp.exp(jnp.einsum("bd,bkd->bk", anchor, candidates) / temperature)


def normalization_constant(scores: jnp.ndarray, num_data: int) -> jnp.ndarray:
  """CRD's Z = mean(scores) · N, a Monte-Carlo estimate of the partition function.

  CRD computes it once, from the first batch, and then holds it fixed; the caller keeps it in state.
  """
  return jax.lax.stop_gradient(jnp.mean(scores) * num_data)


def crd_nce_loss(scores: jnp.ndarray, z: jnp.ndarray, num_data: int, eps: float = 1e-7) -> jnp.ndarray:
  """Scalar binary NCE loss over a batch of (B, K+1) scores, column 0 the positive.

  With P = scores / Z and the uniform noise probability Pn = 1/N, the positive's log-probability of
  coming from the data is log(P₀ / (P₀ + K·Pn)) and each negative's of coming from the noise is
  log(K·Pn / (Pⱼ + K·Pn)); the loss is minus their sum, summed over the batch and divided by B
  (RepDistiller's ContrastLoss, eps included).
  """
  p = scores / z
  k = scores.shape[1] - 1
  noise = k / num_data
  log_data = jnp.log(p[:, 0] / (p[:, 0] + noise + eps))
  log_noise = jnp.sum(jnp.log(noise / (p[:, 1:] + noise + eps)), axis=1)
  return -jnp.mean(log_data + log_noise)


def memory_update(bank: jnp.ndarray, indices: jnp.ndarray, values: jnp.ndarray,
                  momentum: float) -> jnp.ndarray:
  """The bank with rows `indices` set to l2_normalize(m·bank[i] + (1 − m)·values); others unchanged.

  Indices within one call must be distinct (one batch of examples). The result is state, so no
  gradient flows through it.
  """
  mixed = momentum * bank[indices] + (1.0 - momentum) * values.astype(bank.dtype)
  return jax.lax.stop_gradient(bank.at[indices].set(l2_normalize(mixed)))


def init_memory(rng: jax.Array, num_data: int, dim: int, dtype=jnp.float32) -> jnp.ndarray:
  """(N, d) bank, uniform in [−a, a] with a = 1/sqrt(d/3), as CRD initialises it.

  Each coordinate then has variance a²/3 = 1/d, so rows have expected squared norm 1; like
  RepDistiller the rows are NOT normalised here, only once memory_update rewrites them.
  """
  a = 1.0 / (dim / 3.0) ** 0.5
  return jax.random.uniform(rng, (num_data, dim), dtype, minval=-a, maxval=a)
