"""Token-level divergences for LM distillation against float64 numpy references written from the definitions."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.losses import sequence

SHAPES = ((7, 5), (2, 3, 11), (16,))
# (name, options): jsd's β and the skews' α at a few values, ends included.
CASES = (("forward_kl", {}), ("reverse_kl", {}), ("tvd", {}),
         ("jsd", {"beta": 0.0}), ("jsd", {"beta": 0.1}), ("jsd", {"beta": 0.5}), ("jsd", {"beta": 0.9}),
         ("jsd", {"beta": 1.0}), ("skew_forward_kl", {"alpha": 0.1}), ("skew_forward_kl", {"alpha": 0.5}),
         ("skew_reverse_kl", {"alpha": 0.1}), ("skew_reverse_kl", {"alpha": 0.7}))


def ref_probs(logits, temperature):
  z = np.asarray(logits, np.float64) / temperature
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def ref_kl(p, q):
  return np.sum(p * np.log(p / q), -1)


def ref_divergence(name, student, teacher, temperature=1.0, beta=0.5, alpha=0.1):
  """Per-token float64 reference: GKD/TRL's JSD(β) with its ends, DistiLLM's skews, TVD."""
  p_s, p_t = ref_probs(student, temperature), ref_probs(teacher, temperature)
  if name == "forward_kl" or (name == "jsd" and beta == 0):
    return ref_kl(p_t, p_s)
  if name == "reverse_kl" or (name == "jsd" and beta == 1):
    return ref_kl(p_s, p_t)
  if name == "jsd":
    m = (1 - beta) * p_s + beta * p_t
    return beta * ref_kl(p_t, m) + (1 - beta) * ref_kl(p_s, m)
  if name == "skew_forward_kl":
    return ref_kl(p_t, alpha * p_t + (1 - alpha) * p_s)
  if name == "skew_reverse_kl":
    return ref_kl(p_s, (1 - alpha) * p_t + alpha * p_s)
  assert name == "tvd"
  return 0.5 * np.sum(np.abs(p_t - p_s), -1)


def _logits(seed, shape, scale=3.0):
  rng = np.random.default_rng(seed)
  return scale * rng.standard_normal(shape), scale * rng.standard_normal(shape)


@pytest.mark.parametrize("name,options", CASES)
def test_per_token_matches_float64_reference(name, options):
  for shape in SHAPES:
    for temperature in (1.0, 2.5):
      student, teacher = _logits(len(name) * 100 + sum(shape), shape)
      with jax.enable_x64(True):
        got = sequence.per_token(name, jnp.asarray(student), jnp.asarray(teacher), temperature, **options)
        assert got.dtype == jnp.float64 and got.shape == shape[:-1]
      np.testing.assert_allclose(got, ref_divergence(name, student, teacher, temperature, **options), rtol=1e-6)


def test_two_class_hand_computed():
  """p_s = (½, ½), p_t = (¾, ¼) at T = 2 (teacher logits (2·log 3, 0))."""
  with jax.enable_x64(True):
    s, t = jnp.zeros((1, 2), jnp.float64), jnp.asarray([[2 * np.log(3.0), 0.0]], jnp.float64)
    np.testing.assert_allclose(sequence.forward_kl(s, t, 2.0), [0.75 * np.log(3) - np.log(2)], rtol=1e-12)
    np.testing.assert_allclose(sequence.reverse_kl(s, t, 2.0), [np.log(2) - 0.5 * np.log(3)], rtol=1e-12)
    np.testing.assert_allclose(sequence.tvd(s, t, 2.0), [0.25], rtol=1e-12)


def test_jsd_ends_and_symmetry():
  student, teacher = (jnp.asarray(x, jnp.float32) for x in _logits(1, (6, 9)))
  np.testing.assert_array_equal(sequence.jsd(student, teacher, 0.0), sequence.forward_kl(student, teacher))
  np.testing.assert_array_equal(sequence.jsd(student, teacher, 1.0), sequence.reverse_kl(student, teacher))
  # Swapping the arguments swaps the weights: JSD_β(s, t) = JSD_{1−β}(t, s); β = ½ is symmetric.
  for beta in (0.3, 0.5):
    np.testing.assert_allclose(sequence.jsd(student, teacher, beta), sequence.jsd(teacher, student, 1 - beta),
                               rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="beta"):
    sequence.jsd(student, teacher, 1.5)


def test_skew_alpha_one_and_range():
  student, teacher = (jnp.asarray(x, jnp.float32) for x in _logits(2, (6, 9)))
  np.testing.assert_array_equal(sequence.skew_forward_kl(student, teacher, alpha=1.0), 0.0)
  np.testing.assert_array_equal(sequence.skew_reverse_kl(student, teacher, alpha=1.0), 0.0)
  for bad in (0.0, 1.2):
    with pytest.raises(ValueError, match="alpha"):
      sequence.skew_forward_kl(student, teacher, alpha=bad)


@pytest.mark.parametrize("name,options", CASES)
def test_zero_when_student_equals_teacher(name, options):
  logits = jnp.asarray(_logits(3, (8, 13))[0], jnp.float32)
  got = sequence.per_token(name, logits, logits, 2.0, **options)
  assert np.all(np.asarray(got) >= 0)
  np.testing.assert_allclose(got, 0.0, atol=1e-6)


@pytest.mark.parametrize("name,options", CASES)
def test_nonnegative_in_bf16_on_nearly_equal_logits(name, options):
  """bf16 logits a rounding step apart: a naive bf16 KL comes out negative for many tokens, ours never."""
  rng = np.random.default_rng(4)
  x = rng.standard_normal((256, 512))
  student = jnp.asarray(x, jnp.bfloat16)
  teacher = jnp.asarray(x + 1e-3 * rng.standard_normal(x.shape), jnp.bfloat16)
  log_s, log_t = jax.nn.log_softmax(student), jax.nn.log_softmax(teacher)
  assert np.any(np.asarray(jnp.sum(jnp.exp(log_t) * (log_t - log_s), -1)) < 0)  # the trap is real
  got = sequence.per_token(name, student, teacher, **options)
  assert got.dtype == jnp.float32
  assert np.all(np.asarray(got) >= 0)


def test_padded_vocabulary_gives_finite_values_and_gradients():
  """−inf logits on vocabulary entries both models exclude count as probability 0 (no NaN)."""
  student, teacher = (jnp.asarray(x, jnp.float32) for x in _logits(5, (4, 8)))
  pad = lambda z: jnp.concatenate([z, jnp.full((4, 3), -jnp.inf)], -1)
  for name, options in CASES:
    value, grad = jax.value_and_grad(lambda s: jnp.sum(sequence.per_token(name, pad(s), pad(teacher), **options)))(
        student)
    np.testing.assert_allclose(value, np.sum(ref_divergence(name, student, teacher, **options)), rtol=1e-5)
    assert np.all(np.isfinite(grad)), name


def ref_reduce(values, mask, reduction):
  mask = np.ones_like(values) if mask is None else np.asarray(mask, np.float64)
  if reduction == "token":
    return np.sum(mask * values) / np.sum(mask) if mask.sum() else 0.0
  totals = np.sum((mask * values).reshape(len(values), -1), 1)
  counts = np.sum(mask.reshape(len(values), -1), 1)
  keep = counts > 0
  return np.mean(totals[keep] / counts[keep]) if keep.any() else 0.0


@pytest.mark.parametrize("reduction", ("token", "sequence"))
@pytest.mark.parametrize("name", ("forward_kl", "jsd", "tvd"))
def test_masks_and_reductions(name, reduction):
  student, teacher = _logits(6, (5, 7, 10))
  rng = np.random.default_rng(6)
  mask = (rng.random((5, 7)) < 0.6).astype(np.float64)
  mask[2] = 0  # a sequence without tokens: excluded from the "sequence" mean
  mask[4, 1:] = 0  # a one-token sequence weighs as much as a long one under "sequence"
  values = ref_divergence(name, student, teacher, 1.5)
  with jax.enable_x64(True):
    s, t = jnp.asarray(student), jnp.asarray(teacher)
    for m in (None, mask):
      got = sequence.divergence(name, s, t, None if m is None else jnp.asarray(m), temperature=1.5,
                                reduction=reduction)
      np.testing.assert_allclose(got, ref_reduce(values, m, reduction), rtol=1e-10)
    empty, grad = jax.value_and_grad(lambda s: sequence.divergence(name, s, t, jnp.zeros((5, 7)),
                                                                   reduction=reduction))(s)
    assert float(empty) == 0.0 and np.all(np.asarray(grad) == 0)


def test_unknown_names_list_the_choices():
  s = jnp.zeros((2, 3))
  with pytest.raises(ValueError, match="forward_kl, reverse_kl, jsd, skew_forward_kl, skew_reverse_kl, tvd"):
    sequence.divergence("kl", s, s)
  with pytest.raises(ValueError, match="token, sequence"):
    sequence.divergence("tvd", s, s, reduction="mean")
  with pytest.raises(ValueError, match="forward_kl, reverse_kl"):
    sequence.chunked_divergence("kl", s, jnp.zeros((3, 4)), s, jnp.zeros((3, 4)), chunk_size=1)


def _model_outputs(seed, n, ds, dt, v):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((n, ds)) / 2, rng.standard_normal((ds, v)), rng.standard_normal((n, dt)) / 2,
          rng.standard_normal((dt, v)), (rng.random(n) < 0.8).astype(np.float64))


def _rel(got, want):
  return np.linalg.norm(np.asarray(got, np.float64) - want) / np.linalg.norm(want)


@pytest.mark.parametrize("name,options", (("forward_kl", {}), ("reverse_kl", {}), ("tvd", {}), ("jsd", {"beta": 0.9}),
                                          ("skew_forward_kl", {"alpha": 0.1}), ("skew_reverse_kl", {"alpha": 0.1})))
def test_chunked_equals_full_logits(name, options):
  """300 tokens in chunks of 64 (padded to 320): same loss as the full logits, same student gradients."""
  hs, ws, ht, wt, mask = _model_outputs(7, 300, 16, 24, 97)
  kwargs = dict(temperature=2.0, **options)
  full = lambda hs, ws, ht, wt, m: sequence.divergence(name, hs @ ws, ht @ wt, m, **kwargs)
  chunked = lambda hs, ws, ht, wt, m: sequence.chunked_divergence(name, hs, ws, ht, wt, m, 64, **kwargs)
  with jax.enable_x64(True):
    ref_loss, ref_grads = jax.value_and_grad(full, argnums=(0, 1))(*map(jnp.asarray, (hs, ws, ht, wt, mask)))
  args32 = [jnp.asarray(x, jnp.float32) for x in (hs, ws, ht, wt, mask)]
  loss32 = full(*args32)
  loss, grads = jax.jit(jax.value_and_grad(chunked, argnums=(0, 1, 2, 3)))(*args32)
  assert loss.dtype == jnp.float32
  assert abs(float(loss) - float(loss32)) <= 1e-6 * abs(float(loss32))
  assert abs(float(loss) - float(ref_loss)) <= 1e-6 * abs(float(ref_loss))
  for got, want in zip(grads[:2], ref_grads):
    assert _rel(got, np.asarray(want)) <= 1e-5
  assert np.all(np.asarray(grads[2]) == 0) and np.all(np.asarray(grads[3]) == 0)  # teacher held fixed


def test_chunked_without_mask_and_with_large_chunk():
  hs, ws, ht, wt, _ = (jnp.asarray(x, jnp.float32) for x in _model_outputs(8, 10, 4, 4, 7))
  want = sequence.divergence("reverse_kl", hs @ ws, ht @ wt)
  np.testing.assert_allclose(sequence.chunked_divergence("reverse_kl", hs, ws, ht, wt, chunk_size=3), want,
                             rtol=1e-6)
  np.testing.assert_allclose(sequence.chunked_divergence("reverse_kl", hs, ws, ht, wt, chunk_size=4096), want,
                             rtol=1e-6)
  zero = sequence.chunked_divergence("reverse_kl", hs, ws, ht, wt, jnp.zeros(10), chunk_size=3)
  assert float(zero) == 0.0
  # [batch, length, D] hidden states are flattened into tokens; bf16 inputs give a float32 loss.
  batched = sequence.chunked_divergence("reverse_kl", hs.reshape(2, 5, 4), ws, ht.reshape(2, 5, 4), wt,
                                        jnp.ones((2, 5)), chunk_size=3)
  np.testing.assert_allclose(batched, want, rtol=1e-6)
  bf16 = sequence.chunked_divergence("reverse_kl", *(x.astype(jnp.bfloat16) for x in (hs, ws, ht, wt)),
                                     chunk_size=3)
  assert bf16.dtype == jnp.float32
  np.testing.assert_allclose(bf16, want, rtol=0.05)


@pytest.mark.parametrize("name", ("forward_kl", "jsd"))
def test_chunked_needs_a_quarter_of_the_memory(name):
  """N·V = 2^20: the compiled loss+gradient keeps ≤ 1/4 of the naive version's temporaries."""
  hs, ws, ht, wt, mask = (jnp.asarray(x, jnp.float32) for x in _model_outputs(9, 1024, 64, 64, 1024))
  naive = lambda hs, ws, ht, wt, m: sequence.divergence(name, hs @ ws, ht @ wt, m)
  chunked = lambda hs, ws, ht, wt, m: sequence.chunked_divergence(name, hs, ws, ht, wt, m, 128)
  sizes = []
  for fn in (naive, chunked):
    analysis = jax.jit(jax.value_and_grad(fn, argnums=(0, 1))).lower(hs, ws, ht, wt, mask).compile().memory_analysis()
    if analysis is None:
      print(f"memory_analysis() is None on backend {jax.default_backend()!r}: cannot compare temp sizes")
      pytest.skip("memory_analysis() unavailable on this backend")
    sizes.append(analysis.temp_size_in_bytes)
  print(f"{name}: naive {sizes[0]} B, chunked {sizes[1]} B, ratio {sizes[1] / sizes[0]:.3f}")
  assert sizes[1] <= sizes[0] / 4
