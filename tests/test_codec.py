"""research/teachers/codec.py: 4-byte top-k entries, checked against float64 numpy."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.teachers import codec


def test_constants():
  assert codec.ID_BITS + codec.LOGP_BITS == 32
  assert codec.MAX_VOCAB == 262_144 > 152_064  # Qwen's vocabulary fits
  assert codec.MAX_NATS == pytest.approx(31.998046875)
  assert codec.MAX_ERROR == 0.5 / 512


def test_round_trip_random_and_edges():
  rng = np.random.default_rng(0)
  ids = rng.integers(0, codec.MAX_VOCAB, size=(3, 40, 8))
  log_probs = rng.uniform(-codec.MAX_NATS, 0, size=ids.shape)
  ids[0, 0, :4] = [0, codec.MAX_VOCAB - 1, 1, codec.MAX_VOCAB - 1]
  log_probs[0, 0, :4] = [0.0, -codec.MAX_NATS, -np.inf, -100.0]
  log_probs[0, 1, 0] = 5e-7  # positive rounding noise: read as 0
  codes = codec.encode_topk(ids, log_probs.astype(np.float32))
  assert codes.dtype == np.uint32 and codes.shape == ids.shape
  assert codes.nbytes == 4 * ids.size
  got_ids, got_lp = codec.decode_topk(codes)
  assert got_ids.dtype == np.int32 and got_lp.dtype == np.float32
  np.testing.assert_array_equal(got_ids, ids)
  expected = np.clip(log_probs.astype(np.float32).astype(np.float64), -codec.MAX_NATS, 0)
  assert np.max(np.abs(got_lp - expected)) <= codec.MAX_ERROR
  np.testing.assert_array_equal(got_lp[0, 0, :4], [0.0, -codec.MAX_NATS, -codec.MAX_NATS, -codec.MAX_NATS])
  assert got_lp[0, 1, 0] == 0 and not np.signbit(got_lp[0, 0, 0])


def test_error_bound_is_tight():
  log_probs = np.linspace(-codec.MAX_NATS, 0, 200_001)  # float64, ~12 points per quantisation step
  _, got = codec.decode_topk(codec.encode_topk(np.zeros(log_probs.shape, np.int64), log_probs))
  error = np.abs(got.astype(np.float64) - log_probs)
  assert error.max() <= codec.MAX_ERROR
  assert error.max() > 0.9 * codec.MAX_ERROR


def test_decode_in_jit_matches_numpy():
  rng = np.random.default_rng(1)
  ids = rng.integers(0, codec.MAX_VOCAB, size=(5, 20))
  ids[0, 0] = codec.MAX_VOCAB - 1  # top bit set: a signed shift would go wrong
  codes = codec.encode_topk(ids, -rng.exponential(3.0, size=ids.shape))
  np_ids, np_lp = codec.decode_topk(codes)
  jax_ids, jax_lp = jax.jit(codec.decode_topk)(jnp.asarray(codes))
  assert jax_ids.dtype == jnp.int32 and jax_lp.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(jax_ids), np_ids)
  np.testing.assert_array_equal(np.asarray(jax_lp), np_lp)
  # The same bits held as int32 (e.g. a signed storage format) decode the same way.
  signed_ids, _ = codec.decode_topk(jnp.asarray(codes.view(np.int32)))
  np.testing.assert_array_equal(np.asarray(signed_ids), np_ids)


@pytest.mark.parametrize("ids, log_probs, match", [
    ([1, 2], [-1.0], "shape"),
    ([-1], [-1.0], r"\[0, 262144\)"),
    ([codec.MAX_VOCAB], [-1.0], r"\[0, 262144\)"),
    ([1.0], [-1.0], "integers"),
    ([1], [np.nan], "NaN"),
    ([1], [1e-5], "≤ 0"),
    ([1], [np.inf], "≤ 0"),
])
def test_encode_rejects_bad_input(ids, log_probs, match):
  with pytest.raises(ValueError, match=match):
    codec.encode_topk(np.asarray(ids), np.asarray(log_probs))


def test_tail_log_mass():
  rng = np.random.default_rng(2)
  logits = rng.normal(size=(4, 6, 30)) * 2
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  top = np.sort(log_p, -1)[..., ::-1][..., :5]
  expected = np.log(1 - np.exp(top).sum(-1))
  np.testing.assert_allclose(codec.tail_log_mass(top), expected, rtol=1e-12)
  got = codec.tail_log_mass(jnp.asarray(top, jnp.float32))
  assert isinstance(got, jax.Array)
  np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
  # Visible mass at or past 1, and -inf entries: the floor.
  full = np.array([[np.log(0.5), np.log(0.5)], [np.log(0.6), np.log(0.6)], [-np.inf, -np.inf]])
  np.testing.assert_allclose(codec.tail_log_mass(full), [np.log(1e-6), np.log(1e-6), 0.0], atol=1e-12)


def test_topk_from_logits_matches_argsort():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 3, 50)).astype(np.float32) * 3
  ids, log_probs = jax.jit(codec.topk_from_logits, static_argnums=1)(jnp.asarray(logits), 7)
  assert ids.dtype == jnp.int32 and ids.shape == (2, 3, 7) and log_probs.dtype == jnp.float32
  order = np.argsort(-logits.astype(np.float64), axis=-1)[..., :7]
  np.testing.assert_array_equal(np.asarray(ids), order)
  z = logits.astype(np.float64)
  ref = z - np.log(np.exp(z).sum(-1, keepdims=True))
  np.testing.assert_allclose(np.asarray(log_probs), np.take_along_axis(ref, order, -1), atol=1e-5)
  # Feeds the codec directly.
  got_ids, got_lp = codec.decode_topk(codec.encode_topk(np.asarray(ids), np.asarray(log_probs)))
  np.testing.assert_array_equal(got_ids, order)
  assert np.max(np.abs(got_lp - np.take_along_axis(ref, order, -1))) <= codec.MAX_ERROR + 1e-5
