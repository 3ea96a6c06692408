"""DecoderLM: masking (causal, packed, padding), a float64 numpy reference, RoPE, GQA, tying,
taps, and the parameter / FLOP formulas checked by hand."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from research.models import decoder
from research.models.decoder import DecoderLM

TINY = dict(vocab_size=32, dim=16, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=24)


def count(tree) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree))


def init_numpy(model, length=8, seed=0):
  """Variables of `model.init`'s structure filled from numpy: norm scales 1 + N(0, 0.1²) (so the
  reference checks they multiply), other weights N(0, 0.3²)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, length), jnp.int32)))

  def fill(path, leaf):
    std, mean = (0.1, 1.0) if path[-1].key == "scale" else (0.3, 0.0)
    return jnp.asarray(mean + std * rng.standard_normal(leaf.shape), leaf.dtype)
  return jax.tree_util.tree_map_with_path(fill, shapes)


@functools.lru_cache(maxsize=None)
def run(model):
  """A jitted `model.apply`: one compile per input shape (op-by-op dispatch costs seconds)."""
  return jax.jit(model.apply)


def tokens(seed, shape, vocab=32):
  return jnp.asarray(np.random.default_rng(seed).integers(0, vocab, shape), jnp.int32)


# ----------------------------------------------------------------------------- numpy reference

def reference(params, toks, num_heads, num_kv_heads, base=10000.0, tied=False):
  """The whole forward pass in float64 numpy, one sequence (L,) at a time, written out per head
  with RoPE as complex rotation of the pairs (i, i + D/2)."""
  p = {k: np.asarray(v, np.float64) for k, v in _flatten(params).items()}
  rms = lambda x, s: x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * s
  silu = lambda x: x / (1 + np.exp(-x))
  x = p["Embed_0/embedding"][np.asarray(toks)]
  length, dim = x.shape
  head_dim = dim // num_heads
  half = head_dim // 2
  theta = base ** (-np.arange(half) * 2 / head_dim)
  rot = np.exp(1j * np.arange(length)[:, None] * theta)  # (L, D/2)

  def rope(v):  # (L, D)
    z = (v[:, :half] + 1j * v[:, half:]) * rot
    return np.concatenate([z.real, z.imag], -1)

  depth = len({k.split("/")[0] for k in p if k.startswith("Block_")})
  for layer in range(depth):
    w = lambda name: p[f"Block_{layer}/{name}"]
    h = rms(x, w("RMSNorm_0/scale"))
    q, k, v = (h @ w(f"Attention_0/Dense_{i}/kernel") for i in range(3))
    heads = []
    for head in range(num_heads):
      kv = head // (num_heads // num_kv_heads)
      qh = rope(q[:, head * head_dim:(head + 1) * head_dim])
      kh = rope(k[:, kv * head_dim:(kv + 1) * head_dim])
      vh = v[:, kv * head_dim:(kv + 1) * head_dim]
      scores = qh @ kh.T / np.sqrt(head_dim)
      scores[np.triu_indices(length, 1)] = -np.inf
      weights = np.exp(scores - scores.max(-1, keepdims=True))
      heads.append(weights / weights.sum(-1, keepdims=True) @ vh)
    x = x + np.concatenate(heads, -1) @ w("Attention_0/Dense_3/kernel")
    h = rms(x, w("RMSNorm_1/scale"))
    x = x + (silu(h @ w("Dense_0/kernel")) * (h @ w("Dense_1/kernel"))) @ w("Dense_2/kernel")
  x = rms(x, p["RMSNorm_0/scale"])
  return x @ (p["Embed_0/embedding"].T if tied else p["Dense_0/kernel"])


def _flatten(tree, prefix=""):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flatten(value, f"{prefix}{key}/"))
    else:
      out[prefix + key] = value
  return out


@pytest.mark.parametrize("num_kv_heads,tied,depth", [(4, False, 1), (2, False, 1), (1, True, 2)])
def test_matches_float64_reference(num_kv_heads, tied, depth):
  """MHA (kv = heads), GQA and MQA, tied or not: the model equals the hand-written forward."""
  model = DecoderLM(**{**TINY, "num_kv_heads": num_kv_heads, "depth": depth,
                       "tie_embeddings": tied})
  variables = init_numpy(model)
  toks = tokens(1, (2, 8))
  out = np.asarray(run(model)(variables, toks))
  for row in range(2):
    expected = reference(variables["params"], toks[row], 4, num_kv_heads, tied=tied)
    np.testing.assert_allclose(out[row], expected, rtol=1e-4, atol=1e-4)


def test_gqa_equals_mha_with_repeated_key_value_heads():
  """A GQA model equals the MHA model whose K/V kernels repeat each kv head for its group."""
  gqa = DecoderLM(**TINY)
  mha = DecoderLM(**{**TINY, "num_kv_heads": 4})
  variables = init_numpy(gqa)
  params = jax.tree_util.tree_map(np.asarray, variables["params"])
  for layer in range(TINY["depth"]):
    attn = params[f"Block_{layer}"]["Attention_0"]
    for name in ("Dense_1", "Dense_2"):
      kernel = attn[name]["kernel"].reshape(16, 2, 4)         # (dim, kv heads, head_dim)
      attn[name]["kernel"] = np.repeat(kernel, 2, axis=1).reshape(16, 16)
  toks = tokens(2, (2, 8))
  np.testing.assert_allclose(run(mha)({"params": params}, toks), run(gqa)(variables, toks),
                             rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- masking

def test_causal():
  """Changing token t changes no logits before t (and does change those at t)."""
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  toks = tokens(3, (1, 8))
  base = np.asarray(run(model)(variables, toks))
  for t in range(8):
    changed = np.asarray(run(model)(variables, toks.at[0, t].set((toks[0, t] + 1) % 32)))
    np.testing.assert_allclose(changed[:, :t], base[:, :t], rtol=0, atol=1e-6)
    assert np.abs(changed[:, t] - base[:, t]).max() > 1e-3


def test_packed_sequences_equal_separate_runs():
  """Two sequences packed in one row (segment ids 1, 2, positions restarting, trailing pad) give
  each sequence's logits alone."""
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  a, b = tokens(4, (1, 3)), tokens(5, (1, 4))
  packed = jnp.concatenate([a, b, jnp.array([[7]])], axis=1)
  segments = jnp.array([[1, 1, 1, 2, 2, 2, 2, 0]])
  positions = jnp.array([[0, 1, 2, 0, 1, 2, 3, 0]])
  out = np.asarray(run(model)(variables, packed, segments, positions))
  np.testing.assert_allclose(out[:, :3], run(model)(variables, a), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[:, 3:7], run(model)(variables, b), rtol=1e-5, atol=1e-5)
  assert np.isfinite(out).all()  # the padding query attends to nothing but stays finite


def test_padding_does_not_affect_real_tokens():
  """Left and right padding (segment 0): real tokens' logits equal the unpadded run, whatever the
  pad token ids are."""
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  real = tokens(6, (1, 4))
  alone = np.asarray(run(model)(variables, real))
  for pad in (0, 9):
    row = jnp.concatenate([jnp.full((1, 2), pad), real, jnp.full((1, 2), pad)], axis=1)
    segments = jnp.array([[0, 0, 1, 1, 1, 1, 0, 0]])
    positions = jnp.array([[0, 0, 0, 1, 2, 3, 0, 0]])
    out = np.asarray(run(model)(variables, row, segments, positions))
    np.testing.assert_allclose(out[:, 2:6], alone, rtol=1e-5, atol=1e-5)
  # A padding query sees no key (not even earlier padding): its logits depend on its own token
  # only, and outputs and gradients stay finite (no 0/0).
  other = row.at[0, 6].set(5).at[0, 0].set(3)
  np.testing.assert_allclose(run(model)(variables, other, segments, positions)[:, 7], out[:, 7],
                             rtol=1e-5, atol=1e-5)
  loss = lambda params: (run(model)({"params": params}, row, segments, positions)
                         * (segments[..., None] > 0)).sum()
  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(grads))


def test_default_segments_and_positions():
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  toks = tokens(7, (2, 6))
  np.testing.assert_array_equal(
      run(model)(variables, toks),
      run(model)(variables, toks, jnp.ones((2, 6), jnp.int32), jnp.tile(jnp.arange(6), (2, 1))))


def test_rope_depends_only_on_relative_position():
  """Shifting every position by a constant leaves the logits unchanged; moving one position
  (3 → 0) changes the logits from there on."""
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  toks = tokens(8, (2, 8))
  positions = jnp.tile(jnp.arange(8), (2, 1))
  base = np.asarray(run(model)(variables, toks, positions=positions))
  shifted = np.asarray(run(model)(variables, toks, positions=positions + 7))
  np.testing.assert_allclose(shifted, base, rtol=1e-4, atol=1e-4)
  scrambled = np.asarray(run(model)(variables, toks, positions=positions.at[:, 3].set(0)))
  assert np.abs(scrambled[:, 3:] - base[:, 3:]).max() > 1e-3


# ----------------------------------------------------------------------------- parameters

def test_tied_embeddings_share_the_parameter():
  """Tied: no output kernel, V·d fewer parameters, and the output's gradient reaches embedding
  rows that no input token uses (untied: those rows get zero gradient)."""
  toks = jnp.array([[1, 2, 3, 1]])
  grads = {}
  for tied in (False, True):
    model = DecoderLM(**{**TINY, "tie_embeddings": tied})
    variables = init_numpy(model)
    assert ("Dense_0" in variables["params"]) == (not tied)
    assert count(variables) == decoder.param_count(**TINY, tie_embeddings=tied)
    loss = lambda params: run(model)({"params": params}, toks)[..., 5].sum()
    grads[tied] = np.asarray(jax.jit(jax.grad(loss))(variables["params"])["Embed_0"]["embedding"])
  assert count(init_numpy(DecoderLM(**TINY))) - count(
      init_numpy(DecoderLM(**TINY, tie_embeddings=True))) == 32 * 16
  np.testing.assert_array_equal(grads[False][5], 0)
  assert np.abs(grads[True][5]).max() > 1e-3
  assert np.abs(grads[True][1]).max() > 1e-3  # input rows still get gradient


@pytest.mark.parametrize("num_kv_heads,tied", [(2, False), (2, True), (4, False), (1, True)])
def test_param_count_formula_equals_initialised(num_kv_heads, tied):
  config = {**TINY, "num_kv_heads": num_kv_heads, "tie_embeddings": tied}
  variables = jax.eval_shape(DecoderLM(**config).init, jax.random.key(0),
                             jnp.zeros((1, 4), jnp.int32))
  assert set(variables) == {"params"}
  assert count(variables) == decoder.param_count(**config)


def test_param_count_and_flops_by_hand():
  """TINY (V 32, d 16, 2 layers, 4 heads of 4, 2 kv heads, mlp 24), context 8:
  per layer W_q 256 + W_k 128 + W_v 128 + W_o 256 + SwiGLU 3·16·24 = 1152 → 1920 matmul weights,
  norms 2·16 = 32; embedding 512, final norm 16, output 512."""
  assert decoder.param_count(**TINY) == 512 + 2 * (1920 + 32) + 16 + 512 == 4944
  assert decoder.param_count(**TINY, tie_embeddings=True) == 4432
  # 2·(2·1920 + 512) = 8704 matmul FLOPs; attention 2 layers · 2·2·8·16 = 1024.
  assert decoder.flops_per_token(**TINY, context_length=8) == 8704 + 1024 == 9728
  assert decoder.flops_per_token(**TINY, context_length=0) == 8704


def test_taps_present_with_shapes():
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  toks = tokens(9, (3, 5))
  logits, state = jax.jit(lambda v, t: model.apply(v, t, mutable=["taps"]))(variables, toks)
  assert logits.shape == (3, 5, 32)
  shapes = {name: value[0].shape for name, value in state["taps"].items()}
  assert shapes == {"block1": (3, 5, 16), "block2": (3, 5, 16), "penultimate": (3, 5, 16)}
  # "penultimate" is the unembedding's input.
  unembed = variables["params"]["Dense_0"]["kernel"]
  np.testing.assert_allclose(state["taps"]["penultimate"][0] @ unembed, logits, rtol=1e-5,
                             atol=1e-5)


def test_taps_through_methods_forward():
  """The distillation methods' reader finds sown names and submodule paths (here an attention)."""
  from research.methods import taps  # pylint: disable=import-outside-toplevel
  model = DecoderLM(**TINY)
  variables = init_numpy(model)
  toks = tokens(9, (3, 5))
  features, _ = taps.forward(model, variables, toks,
                             ("block2", "penultimate", "Block_0/Attention_0"))
  assert features["logits"].shape == (3, 5, 32)
  assert features["Block_0/Attention_0"].shape == (3, 5, 16)
  np.testing.assert_allclose(features["logits"], run(model)(variables, toks), rtol=1e-5, atol=1e-5)


def test_real_initialiser():
  """The flax initialisers (compiled once): only "params", no taps; embedding std 1/sqrt(dim) so
  tied logits start at unit scale."""
  model = DecoderLM(**TINY, tie_embeddings=True)
  toks = tokens(9, (4, 8))
  variables = jax.jit(model.init)(jax.random.key(0), toks)
  assert set(variables) == {"params"}
  np.testing.assert_allclose(np.asarray(variables["params"]["Embed_0"]["embedding"]).std(),
                             16 ** -0.5, rtol=0.15)
  logits = np.asarray(run(model)(variables, toks))
  assert np.isfinite(logits).all() and 0.3 < logits.std() < 3


def test_bfloat16_compute():
  model = DecoderLM(**TINY, dtype=jnp.bfloat16)
  variables = init_numpy(model)
  toks = tokens(10, (2, 6))
  out = run(model)(variables, toks)
  assert out.dtype == jnp.bfloat16
  full = run(DecoderLM(**TINY))(variables, toks)
  assert np.abs(np.asarray(out, np.float32) - np.asarray(full)).max() < 0.1 * np.abs(full).max()


@pytest.mark.parametrize("changes,message", [
    (dict(num_kv_heads=3), "multiple of num_kv_heads=3"),
    (dict(dim=18), "dim=18 must be divisible by num_heads=4"),
    (dict(dim=12, num_heads=4), "must be even"),
    (dict(num_kv_heads=0), "must be positive"),
])
def test_bad_config_raises(changes, message):
  with pytest.raises(ValueError, match=message):
    DecoderLM(**{**TINY, **changes})
  with pytest.raises(ValueError, match=message):
    decoder.param_count(**{**TINY, **changes})


def test_named_sizes_span_cpu_tests_to_a_billion_parameters():
  """The sizes' parameter counts (by formula, checked against init for the CPU ones above)."""
  counts = {name: decoder.param_count(**size) for name, size in decoder.SIZES.items()}
  assert counts["tiny"] == 75_792 and counts["small"] == 804_736
  assert 1.0e9 < counts["1b"] < 1.1e9 and 2.8e9 < counts["3b"] < 3.0e9
  for name in ("tiny", "small"):
    model = decoder.DecoderLM(**decoder.SIZES[name])
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32)))
    assert sum(x.size for x in jax.tree.leaves(shapes)) == counts[name]
