"""The language-model train step (research/train/lm_step.py) on hand-built token rows.

Losses against float64 numpy references computed from the models' own logits, global token
normalisation (8 devices == 1 with rows of different lengths), chunked == full divergence,
on-policy rows == the sampler's output for the documented keys, and the replay buffer's
bookkeeping (DistiLLM): generation calls counted, replays drawn from stored global batches.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import sampling
from research.methods import lm
from research.models.decoder import DecoderLM
from research.train import lm_step, parallel
from research.train.state import TrainState, init_variables
from tree_asserts import assert_trees_close

VOCAB, LENGTH, PROMPT, BATCH = 11, 12, 5, 8
PAD, BOS, EOS = 0, 1, 2
STUDENT = DecoderLM(VOCAB, 16, 1, 2, 1, 32)
TEACHER = DecoderLM(VOCAB, 24, 2, 2, 2, 48)


def _rows(seed=0) -> dict:
  """Prompt/completion rows in the left-padded layout: prompts of 2–5 tokens, completions of
  1–7 tokens ending in EOS, so each row trains a different number of tokens."""
  rng = np.random.default_rng(seed)
  rows = {k: np.zeros((BATCH, LENGTH), np.int32) for k in ("tokens", "segment_ids", "positions")}
  rows["loss_mask"] = np.zeros((BATCH, LENGTH), np.float32)
  for r in range(BATCH):
    p, c = rng.integers(2, PROMPT + 1), rng.integers(1, LENGTH - PROMPT + 1)
    prompt = [BOS] + list(rng.integers(3, VOCAB, p - 1))
    completion = list(rng.integers(3, VOCAB, c - 1)) + [EOS]
    cols = np.arange(PROMPT - p, PROMPT + c)
    rows["tokens"][r, cols] = prompt + completion
    rows["segment_ids"][r, cols] = 1
    rows["positions"][r, cols] = np.arange(p + c)
    rows["loss_mask"][r, PROMPT:PROMPT + c] = 1
  return rows


def _method(**overrides) -> lm.TokenDistillation:
  cfg = config_lib.defaults().method
  cfg.update(dict(name="token_kd", ce_weight=0.0, kd_weight=1.0))
  cfg.update(overrides)
  return lm.build(cfg)


def _setup(method, devices: int, lr=1e-2):
  engine = parallel.ShardMapEngine(jax.devices()[:devices])
  tx = optax.sgd(lr)
  student_vars = init_variables(STUDENT, (LENGTH,), jax.random.PRNGKey(0), jnp.int32)
  teacher_vars = init_variables(TEACHER, (LENGTH,), jax.random.PRNGKey(1), jnp.int32)
  state = TrainState.create(student_vars, tx, jax.random.PRNGKey(2), {}, method.init_state(BATCH, LENGTH))
  step = engine.compile_train(lm_step.make_train_step(
      STUDENT, TEACHER if method.needs_teacher else None, method, tx, PROMPT, PAD, EOS))
  return engine, step, jax.device_get(state), (jax.device_get(teacher_vars),)


def _run(method, devices: int, steps: int, batches=None):
  engine, step, state, teacher = _setup(method, devices)
  state, teacher = engine.put_replicated(state), engine.put_replicated(teacher)
  history = []
  for i in range(steps):
    batch = (batches or [_rows(i) for i in range(steps)])[i]
    state, metrics = step(state, teacher, engine.put_batch(batch))
    history.append(jax.device_get(metrics))
  return jax.device_get(engine.unreplicate(state)), history


def _log_softmax64(logits):
  z = np.asarray(logits, np.float64)
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _reference(method, rows, student_vars, teacher_vars) -> float:
  """The step's loss in float64 numpy from the models' float32 logits."""
  args = (rows["tokens"], rows["segment_ids"], rows["positions"])
  s = _log_softmax64(STUDENT.apply(student_vars, *args))[:, :-1]
  t = _log_softmax64(TEACHER.apply(teacher_vars, *args))[:, :-1]
  mask = rows["loss_mask"][:, 1:].astype(np.float64)
  targets = rows["tokens"][:, 1:]
  ce = -np.take_along_axis(s, targets[..., None], -1)[..., 0]
  temp = method.temperature
  s_t = _log_softmax64(s / temp) if temp != 1 else s
  t_t = _log_softmax64(t / temp) if temp != 1 else t
  kl = lambda a, b: np.sum(np.exp(a) * (a - b), -1)
  if method.divergence == "forward_kl":
    div = kl(t_t, s_t)
  elif method.divergence == "reverse_kl":
    div = kl(s_t, t_t)
  elif method.divergence == "jsd":
    beta = method.beta
    m = np.log(beta * np.exp(t_t) + (1 - beta) * np.exp(s_t))
    div = beta * kl(t_t, m) + (1 - beta) * kl(s_t, m)
  else:
    raise NotImplementedError(method.divergence)
  total = method.ce_weight * ce + method.kd_weight * div
  return float(np.sum(total * mask) / np.sum(mask))


@pytest.mark.parametrize("overrides", [
    dict(name="supervised", ce_weight=1.0, kd_weight=0.0),
    dict(divergence="forward_kl", temperature=2.0),
    dict(divergence="reverse_kl", ce_weight=0.5),
    dict(divergence="jsd", jsd_beta=0.3),
])
def test_loss_matches_float64_reference_on_8_devices(overrides):
  method = _method(**overrides)
  engine, step, state, teacher = _setup(method, 8)
  rows = _rows(0)
  expected = _reference(method, rows, state.variables, teacher[0])
  _, metrics = step(engine.put_replicated(state), engine.put_replicated(teacher), engine.put_batch(rows))
  np.testing.assert_allclose(float(metrics["loss"]), expected, rtol=2e-5)


def test_eight_devices_equal_one_with_uneven_token_counts():
  method = _method(divergence="jsd", ce_weight=0.5)
  one, m1 = _run(method, 1, 3)
  eight, m8 = _run(method, 8, 3)
  assert_trees_close(eight.variables, one.variables, rtol=1e-5, atol=1e-6)
  for a, b in zip(m1, m8):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], rtol=1e-6)


def test_chunked_divergence_step_equals_full_logits_step():
  full, m_full = _run(_method(divergence="forward_kl"), 2, 2)
  chunked, m_chunk = _run(_method(divergence="forward_kl", chunk_size=7), 2, 2)
  np.testing.assert_allclose(m_chunk[0]["loss"], m_full[0]["loss"], rtol=1e-5)
  assert_trees_close(chunked.variables, full.variables, rtol=1e-4, atol=1e-6)


def test_on_policy_rows_are_the_students_samples():
  """λ = 1 with a one-slot buffer: after a step the buffer holds exactly what the sampler draws
  from the prompts with key fold_in(split(fold_in(rng, 0))[1], global row)."""
  method = _method(on_policy_fraction=1.0, replay_size=1, sample_temperature=1.0)
  engine, step, state, teacher = _setup(method, 4)
  rows = _rows(0)
  sample_rng = jax.random.split(jax.random.fold_in(state.rng, 0))[1]
  keys = jax.vmap(lambda i: jax.random.fold_in(sample_rng, i))(jnp.arange(BATCH))
  expected = sampling.generate(STUDENT, state.variables, rows["tokens"][:, :PROMPT],
                               rows["segment_ids"][:, :PROMPT], rows["positions"][:, :PROMPT], keys,
                               LENGTH - PROMPT, temperature=1.0, stop_id=EOS, pad_id=PAD)
  new_state, metrics = step(engine.put_replicated(state), engine.put_replicated(teacher),
                            engine.put_batch(rows))
  buffer = jax.device_get(engine.unreplicate(new_state).method_state)["buffer"]
  for key in lm.FIELDS:
    np.testing.assert_array_equal(buffer[key][0], np.asarray(expected[key]), err_msg=key)
  assert float(metrics["on_policy"]) == 1.0 and float(metrics["generations"]) == 1.0
  # The loss is the divergence on those sampled rows.
  sampled = {k: np.asarray(expected[k]) for k in lm.FIELDS}
  np.testing.assert_allclose(float(metrics["loss"]),
                             _reference(method, sampled, state.variables, teacher[0]), rtol=2e-5)


def test_replay_buffer_saves_generation_calls_and_is_device_count_independent():
  method = _method(on_policy_fraction=0.75, replay_size=2, replay_fresh=0.5, divergence="skew_reverse_kl")
  steps = 12
  batches = [_rows(i) for i in range(steps)]
  one, m1 = _run(method, 1, steps, batches)
  eight, m8 = _run(method, 8, steps, batches)
  on_policy = sum(m["on_policy"] for m in m1)
  generations = int(one.method_state["generations"])
  assert 0 < generations < on_policy, (generations, on_policy)
  assert int(one.method_state["filled"]) == 2
  np.testing.assert_array_equal(eight.method_state["buffer"]["tokens"], one.method_state["buffer"]["tokens"])
  assert_trees_close(eight.variables, one.variables, rtol=1e-4, atol=1e-6)


def test_off_policy_steps_never_sample():
  method = _method(on_policy_fraction=0.0)
  state, metrics = _run(method, 1, 3)
  assert int(state.method_state["generations"]) == 0
  assert all(m["on_policy"] == 0 for m in metrics)


def test_method_errors_name_the_key():
  from research.errors import UserError  # pylint: disable=import-outside-toplevel
  bad = [dict(name="crd"), dict(kd_weight=0.0), dict(on_policy_fraction=1.5), dict(chunk_size=4, ce_weight=1.0),
         dict(replay_size=2), dict(name="supervised", kd_weight=1.0)]
  for overrides in bad:
    cfg = config_lib.defaults().method
    cfg.update(dict(name="token_kd", ce_weight=0.0, kd_weight=1.0))
    cfg.update(overrides)
    with pytest.raises(UserError):
      lm.build(cfg)
