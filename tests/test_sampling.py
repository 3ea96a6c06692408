"""The KV-cache decode path and the samplers: cache logits == full forward, cached generate ==
the no-cache reference, the processed distributions against numpy, stop tokens, left-padding
invariance, shard_map == one device, and beam search against greedy and exhaustive search."""
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from research import sampling
from research.models.decoder import DecoderLM

TINY = dict(vocab_size=32, dim=16, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=24)
DECODE = dict(depth=1, vocab_size=8)  # decoding tests: one block compiles faster, 8 tokens stop often


@functools.lru_cache(maxsize=None)
def model_and_vars(seed=0, scale=2.0, **overrides):
  """A tiny DecoderLM with its init weights × `scale`: sharper logits than the init's make
  decoding depend on the model, not on near-ties (at scale 2 logits reach ~15, so float32
  rounding differs by ~3e-5 between the cached and full paths; they agree to 1e-14 in float64)."""
  model = DecoderLM(**{**TINY, **overrides})
  variables = model.init(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))
  return model, jax.tree_util.tree_map(lambda a: a * scale, variables)


def prompts(lengths, width, vocab=32, seed=0):
  """Left-padded prompts (B, width) with real lengths `lengths`, tokens in [3, vocab)."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((len(lengths), width), np.int32)
  for row, n in enumerate(lengths):
    seg[row, width - n:] = 1
  toks = rng.integers(3, vocab, seg.shape) * seg
  pos = np.maximum(np.cumsum(seg, 1) - 1, 0) * seg
  return jnp.asarray(toks, jnp.int32), jnp.asarray(seg), jnp.asarray(pos, jnp.int32)


@functools.lru_cache(maxsize=None)
def jitted(fn, model, **kwargs):
  return jax.jit(functools.partial(fn, model, **kwargs))


# ------------------------------------------------------------------------------------ the cache

@pytest.mark.parametrize("overrides", [{}, dict(num_kv_heads=1, tie_embeddings=True),
                                       dict(num_kv_heads=4)])
def test_cache_matches_full_forward(overrides):
  model, variables = model_and_vars(scale=1.0, **overrides)  # logits of unit scale
  toks, seg, pos = prompts([6, 3, 1, 4], 6, seed=1)
  extra = jnp.asarray(np.random.default_rng(2).integers(3, 32, (4, 5)), jnp.int32)
  full_toks = jnp.concatenate([toks, extra], 1)
  full_seg = jnp.concatenate([seg, jnp.ones_like(extra)], 1)
  full_pos = jnp.concatenate([pos, pos[:, -1:] + 1 + jnp.arange(5)], 1)
  expected = jax.jit(model.apply)(variables, full_toks, full_seg, full_pos)
  step = jax.jit(lambda v, t, s, p, c, i: model.apply(v, t, s, p, cache=c, cache_index=i))
  cache = model.init_cache(4, 12)  # one spare column, left empty
  logits, cache = step(variables, toks, seg, pos, cache, 0)
  got = [logits]
  for i in range(6, 11):
    logits, cache = step(variables, full_toks[:, i:i + 1], full_seg[:, i:i + 1],
                         full_pos[:, i:i + 1], cache, i)
    got.append(logits)
  np.testing.assert_allclose(jnp.concatenate(got, 1), expected, atol=1e-5, rtol=1e-5)
  np.testing.assert_array_equal(cache["segment_ids"][:, :11], full_seg)
  assert not cache["segment_ids"][:, 11].any()
  head_dim = TINY["dim"] // TINY["num_heads"]
  assert cache["layers"][0]["keys"].shape == (4, 12, model.num_kv_heads, head_dim)


def test_no_cache_call_unchanged():
  model, variables = model_and_vars()
  toks, seg, pos = prompts([5, 2], 5)
  out = jax.eval_shape(model.apply, variables, toks, seg, pos)
  assert isinstance(out, jax.ShapeDtypeStruct) and out.shape == (2, 5, 32)


# ------------------------------------------------------------------------- logit processing

def numpy_processed(logits, temperature, top_k, top_p):
  """The processed distribution in float64 numpy, by its definition."""
  z = np.asarray(logits, np.float64) / temperature
  order = np.argsort(-z)
  keep = np.zeros(len(z), bool)
  keep[order[:top_k or len(z)]] = True
  p = np.where(keep, np.exp(z - z.max()), 0)
  p /= p.sum()
  mass = 0.0
  nucleus = np.zeros(len(z), bool)
  for i in order:
    if mass >= top_p or not keep[i]:
      break
    nucleus[i], mass = True, mass + p[i]
  p = np.where(nucleus, p, 0)
  return p / p.sum()


CASES = [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.0, 2, 1.0), (1.0, 0, 0.6), (1.3, 3, 0.8), (1.0, 0, 0.01)]


@pytest.mark.parametrize("temperature,top_k,top_p", CASES)
def test_processed_distribution(temperature, top_k, top_p):
  logits = jnp.asarray([1.0, 2.5, -0.5, 2.0, 0.3])
  want = numpy_processed(logits, temperature, top_k, top_p)
  got = jax.nn.softmax(sampling.process_logits(logits, temperature, top_k, top_p))
  np.testing.assert_allclose(got, want, atol=1e-6)
  # Draws through the sampler's own path land within 4 sigma of the numpy probabilities.
  draws = 20000
  keys = sampling.row_keys(jax.random.key(3), draws)
  tokens, _, sample_lp = jax.jit(lambda k: sampling.choose(
      jnp.broadcast_to(logits, (draws, 5)), k, 0, temperature, top_k, top_p))(keys)
  freq = np.bincount(np.asarray(tokens), minlength=5) / draws
  sigma = np.sqrt(want * (1 - want) / draws)
  assert np.all(np.abs(freq - want) <= 4 * sigma + 1e-12), (freq, want)
  np.testing.assert_allclose(np.exp(sample_lp), want[np.asarray(tokens)], rtol=1e-5)


def test_top_p_by_hand():
  # probs ∝ [4, 3, 2, 1]/10: top_p 0.5 keeps {0, 1} (0.4 < 0.5 ≤ 0.7); 0.4 keeps {0} only.
  logits = jnp.log(jnp.asarray([0.4, 0.3, 0.2, 0.1]))
  np.testing.assert_allclose(jax.nn.softmax(sampling.process_logits(logits, top_p=0.5)),
                             [4 / 7, 3 / 7, 0, 0], atol=1e-6)
  np.testing.assert_allclose(jax.nn.softmax(sampling.process_logits(logits, top_p=0.4)),
                             [1, 0, 0, 0], atol=1e-6)


# ------------------------------------------------------------------------ generate vs naive

@pytest.mark.parametrize("kwargs", [dict(temperature=0.0), dict(temperature=1.0),
                                    dict(temperature=0.8, top_k=4), dict(top_p=0.7)])
def test_generate_matches_naive(kwargs):
  model, variables = model_and_vars(**DECODE)
  toks, seg, pos = prompts([5, 2, 4, 1], 5, vocab=8, seed=4)
  keys = sampling.row_keys(jax.random.key(5), 4)
  kwargs = dict(kwargs, max_new_tokens=8, stop_id=3)
  ours = jitted(sampling.generate, model, **kwargs)(variables, toks, seg, pos, keys)
  ref = jitted(sampling.naive_generate, model, **kwargs)(variables, toks, seg, pos, keys)
  for name in ("tokens", "segment_ids", "positions", "loss_mask", "lengths"):
    np.testing.assert_array_equal(ours[name], ref[name], err_msg=name)
  for name in ("log_probs", "sample_log_probs"):
    np.testing.assert_allclose(ours[name], ref[name], atol=1e-5, err_msg=name)
  # The raw log-probs really are the temperature-1 model's: recompute with one full forward.
  logits = jax.jit(model.apply)(variables, ours["tokens"], ours["segment_ids"], ours["positions"])
  lp = jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1]), ours["tokens"][:, 1:, None], -1)
  np.testing.assert_allclose(lp[..., 0] * ours["loss_mask"][:, 1:], ours["log_probs"][:, 1:],
                             atol=1e-5)


def test_stop_token_and_layout():
  model, variables = model_and_vars(**DECODE)
  toks, seg, pos = prompts([3, 3, 2, 1, 3, 2, 3, 1], 3, vocab=8, seed=6)
  keys = sampling.row_keys(jax.random.key(7), 8)
  out = jitted(sampling.generate, model, max_new_tokens=10, stop_id=3, pad_id=0)(
      variables, toks, seg, pos, keys)
  out = jax.tree_util.tree_map(np.asarray, out)
  lengths = out["lengths"]
  assert len(set(lengths.tolist())) >= 3 and lengths.min() < 10  # rows stop at different times
  for row, n in enumerate(lengths):
    gen = out["tokens"][row, 3:]
    if n < 10:
      assert gen[n - 1] == 3 and 3 not in gen[:n - 1]
    else:
      assert 3 not in gen[:n]
    assert not gen[n:].any()
    np.testing.assert_array_equal(out["loss_mask"][row, 3:], np.arange(10) < n)
    np.testing.assert_array_equal(out["segment_ids"][row, 3:], np.arange(10) < n)
    np.testing.assert_array_equal(out["positions"][row, 3:],
                                  np.where(np.arange(10) < n, pos[row, -1] + 1 + np.arange(10), 0))
    assert (out["log_probs"][row, 3 + n:] == 0).all() and (out["log_probs"][row, 3:3 + n] < 0).all()
  assert not out["loss_mask"][:, :3].any() and not out["log_probs"][:, :3].any()


def test_left_padding_invariance():
  model, variables = model_and_vars(**DECODE)
  toks, seg, pos = prompts([4, 2, 3], 4, vocab=8, seed=8)
  keys = sampling.row_keys(jax.random.key(9), 3)
  pad = lambda a: jnp.pad(a, ((0, 0), (3, 0)))
  kwargs = dict(max_new_tokens=6, temperature=0.9, top_k=5)
  a = jitted(sampling.generate, model, **kwargs)(variables, toks, seg, pos, keys)
  b = jitted(sampling.generate, model, **kwargs)(variables, pad(toks), pad(seg), pad(pos), keys)
  np.testing.assert_array_equal(a["tokens"][:, 4:], b["tokens"][:, 7:])
  np.testing.assert_array_equal(a["positions"][:, 4:], b["positions"][:, 7:])
  np.testing.assert_allclose(a["log_probs"][:, 4:], b["log_probs"][:, 7:], atol=1e-5)


def test_shard_map_matches_one_device():
  devices = jax.devices()
  assert len(devices) == 8
  model, variables = model_and_vars(**DECODE)
  toks, seg, pos = prompts([5, 1, 3, 4, 2, 5, 5, 1] * 2, 5, vocab=8, seed=10)
  keys = sampling.row_keys(jax.random.key(11), 16)
  per_device = lambda v, t, s, p, k: sampling.generate(model, v, t, s, p, k, 6, temperature=1.0,
                                                       top_p=0.9, stop_id=4)
  mesh = Mesh(np.asarray(devices), ("data",))
  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(),) + (P("data"),) * 4,
                                  out_specs=P("data")))(variables, toks, seg, pos, keys)
  single = jax.jit(per_device)(variables, toks, seg, pos, keys)
  for name in single:
    np.testing.assert_allclose(sharded[name], single[name], atol=1e-5, err_msg=name)
  np.testing.assert_array_equal(sharded["tokens"], single["tokens"])
  # A slice's keys come from row_keys with its offset.
  np.testing.assert_array_equal(sampling.row_keys(jax.random.key(11), 2, offset=6), keys[6:8])


# ------------------------------------------------------------------------------- beam search

def test_beam_one_is_greedy():
  model, variables = model_and_vars(**DECODE)
  toks, seg, pos = prompts([3, 1, 2, 3], 3, vocab=8, seed=12)
  keys = sampling.row_keys(jax.random.key(0), 4)
  greedy = jitted(sampling.generate, model, max_new_tokens=8, temperature=0.0, stop_id=3)(
      variables, toks, seg, pos, keys)
  beam = jitted(sampling.beam_search, model, beam_size=1, max_new_tokens=8, stop_id=3)(
      variables, toks, seg, pos)
  for name in ("tokens", "segment_ids", "positions", "loss_mask", "lengths"):
    np.testing.assert_array_equal(beam[name], greedy[name], err_msg=name)
  np.testing.assert_allclose(beam["scores"], greedy["log_probs"].sum(1), atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wider_beam_scores_at_least_greedy(seed):
  model, variables = model_and_vars(seed=seed, **DECODE)
  toks, seg, pos = prompts([3, 2, 1, 3], 3, vocab=8, seed=seed)
  scores = [jitted(sampling.beam_search, model, beam_size=k, max_new_tokens=6, stop_id=3)(
      variables, toks, seg, pos)["scores"] for k in (1, 4)]
  assert np.all(scores[1] >= scores[0] - 1e-5)
  beam = jitted(sampling.beam_search, model, beam_size=4, max_new_tokens=6, stop_id=3)(
      variables, toks, seg, pos)
  np.testing.assert_allclose(beam["log_probs"].sum(1), beam["scores"], atol=1e-5)


def test_beam_equals_exhaustive_search():
  """Vocab 4, 3 new tokens, no stop: a beam of 16 = 4² keeps every 2-token prefix, so it must
  find the best of all 64 continuations, scored here by one full forward each."""
  model, variables = model_and_vars(seed=3, depth=1, vocab_size=4)
  toks, seg, pos = prompts([3, 1], 3, vocab=4, seed=13)
  beam = jitted(sampling.beam_search, model, beam_size=16, max_new_tokens=3, stop_id=None)(
      variables, toks, seg, pos)
  conts = jnp.asarray(list(itertools.product(range(4), repeat=3)), jnp.int32)  # (64, 3)
  for row in range(2):
    full = jnp.concatenate([jnp.broadcast_to(toks[row], (64, 3)), conts], 1)
    segs = jnp.broadcast_to(jnp.concatenate([seg[row], jnp.ones(3, jnp.int32)]), (64, 6))
    poss = jnp.broadcast_to(jnp.concatenate([pos[row], pos[row, -1] + 1 + jnp.arange(3)]), (64, 6))
    logp = jax.nn.log_softmax(jax.jit(model.apply)(variables, full, segs, poss))
    score = jnp.take_along_axis(logp[:, 2:5], conts[..., None], -1)[..., 0].sum(1)
    best = int(jnp.argmax(score))
    np.testing.assert_allclose(beam["scores"][row], score[best], atol=1e-5)
    np.testing.assert_array_equal(beam["tokens"][row, 3:], conts[best])


def test_length_penalty_normalises_score():
  model, variables = model_and_vars(**DECODE)
  toks, seg, pos = prompts([3, 2], 3, vocab=8, seed=14)
  out = jitted(sampling.beam_search, model, beam_size=3, max_new_tokens=6, stop_id=3,
               length_penalty=1.0)(variables, toks, seg, pos)
  np.testing.assert_allclose(out["scores"], out["log_probs"].sum(1) / out["lengths"], atol=1e-5)
