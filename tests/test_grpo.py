"""Method 'grpo' (research/methods/lm.py, research/train/lm_step.py): outcome-reward RL of a student.

Checked: the group-relative advantages and the exact-match reward against hand-computed values;
the step's loss and gradient against a float64 reference computed from the SAME sampled rows
(drawn with the documented keys fold_in(sample_rng, row·G + g)); 8 devices == 1; and a tiny run
end to end through train_and_evaluate on the arithmetic task.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research import sampling
from research.errors import UserError
from research.methods import lm
from research.models.decoder import DecoderLM
from research.train import lm_step, parallel
from research.train.loop import train_and_evaluate
from research.train.state import TrainState, init_variables
from tree_asserts import assert_trees_close

VOCAB, LENGTH, PROMPT, BATCH, GROUP = 7, 9, 4, 8, 4
PAD, BOS, EOS = 0, 1, 2
STUDENT = DecoderLM(VOCAB, 16, 1, 2, 1, 32)
LR = 0.5


def _method(**overrides) -> lm.TokenDistillation:
  cfg = config_lib.defaults().method
  cfg.update(dict(name="grpo", group_size=GROUP, sample_temperature=1.0))
  cfg.update(overrides)
  return lm.build(cfg)


def test_group_advantages_hand_computed():
  rewards = np.array([[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]], np.float32)
  third = np.sqrt(0.25 * 0.75)  # population std of one 1 among four
  expected = np.array([[0.5, -0.5, -0.5, 0.5] / np.float64(0.5 + 1e-4), [0, 0, 0, 0],
                       np.array([-0.25, -0.25, -0.25, 0.75]) / (third + 1e-4)])
  np.testing.assert_allclose(np.asarray(lm.group_advantages(jnp.asarray(rewards))), expected, rtol=1e-6)


def test_exact_match_reward_counts_tokens_length_and_eos():
  # Columns 0–1 prompt, 2–5 completion. Reference completion "5 6 EOS".
  ref = np.array([1, 3, 5, 6, EOS, PAD])
  ref_mask = np.array([0, 0, 1, 1, 1, 0], np.float32)
  samples = [  # (tokens, loss_mask, reward)
      ([1, 3, 5, 6, EOS, PAD], [0, 0, 1, 1, 1, 0], 1.0),  # exact
      ([1, 3, 5, 6, 4, 4], [0, 0, 1, 1, 1, 1], 0.0),      # right digits, no EOS (ran on)
      ([1, 3, 5, 6, 4, EOS], [0, 0, 1, 1, 1, 1], 0.0),    # a longer answer
      ([1, 3, 5, EOS, PAD, PAD], [0, 0, 1, 1, 0, 0], 0.0),  # a prefix of it
      ([1, 3, 5, 4, EOS, PAD], [0, 0, 1, 1, 1, 0], 0.0),  # one wrong token
      ([1, 4, 5, 6, EOS, PAD], [0, 0, 1, 1, 1, 0], 1.0),  # prompt columns are not compared
  ]
  tokens = jnp.array([s[0] for s in samples])
  masks = jnp.array([s[1] for s in samples], jnp.float32)
  reward = lm.exact_match_reward(tokens, masks, jnp.tile(ref, (len(samples), 1)),
                                 jnp.tile(ref_mask, (len(samples), 1)))
  np.testing.assert_array_equal(np.asarray(reward), [s[2] for s in samples])


def test_bad_settings_fail_with_the_fix():
  for overrides in (dict(group_size=1), dict(sample_temperature=0.0), dict(kd_weight=1.0),
                    dict(on_policy_fraction=0.5)):
    with pytest.raises(UserError, match="grpo"):
      _method(**overrides)
  assert not _method().needs_teacher
  config_lib.resolve({"method": {"name": "grpo"}, "dataset": {"prompt_len": 8}})  # no teacher needed
  with pytest.raises(UserError, match="prompt_len"):
    config_lib.resolve({"method": {"name": "grpo"}})


def _prompts(seed=0) -> dict:
  """Left-padded prompts of 2–4 tokens (columns < PROMPT); completions filled in by _with_reference."""
  rng = np.random.default_rng(seed)
  rows = {k: np.zeros((BATCH, LENGTH), np.int32) for k in ("tokens", "segment_ids", "positions")}
  rows["loss_mask"] = np.zeros((BATCH, LENGTH), np.float32)
  for r in range(BATCH):
    p = rng.integers(2, PROMPT + 1)
    cols = np.arange(PROMPT - p, PROMPT)
    rows["tokens"][r, cols] = [BOS] + list(rng.integers(3, VOCAB, p - 1))
    rows["segment_ids"][r, cols] = 1
    rows["positions"][r, cols] = np.arange(p)
  return rows


def _setup(devices: int, method=None):
  method = method or _method()
  engine = parallel.ShardMapEngine(jax.devices()[:devices])
  tx = optax.sgd(LR)
  variables = init_variables(STUDENT, (LENGTH,), jax.random.PRNGKey(0), jnp.int32)
  state = TrainState.create(variables, tx, jax.random.PRNGKey(2), {}, method.init_state(BATCH, LENGTH))
  step = engine.compile_train(lm_step.make_train_step(STUDENT, None, method, tx, PROMPT, PAD, EOS))
  return engine, step, jax.device_get(state)


@jax.jit
def _generate(variables, tokens, segment_ids, positions, keys):
  return sampling.generate(STUDENT, variables, tokens, segment_ids, positions, keys, LENGTH - PROMPT,
                           temperature=1.0, stop_id=EOS, pad_id=PAD)


def _samples(state, rows, method) -> dict:
  """What the step samples: each prompt GROUP times, keys fold_in(sample_rng, row·G + g)."""
  assert method.sample_temperature == 1.0  # as _generate draws
  sample_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))[1]
  keys = sampling.row_keys(sample_rng, BATCH * GROUP)
  prompt = {k: np.repeat(rows[k][:, :PROMPT], GROUP, axis=0) for k in ("tokens", "segment_ids", "positions")}
  out = _generate({"params": state.variables["params"]}, prompt["tokens"], prompt["segment_ids"],
                  prompt["positions"], keys)
  return {k: np.asarray(out[k]) for k in lm.FIELDS}


def _with_reference(rows, samples) -> dict:
  """The batch whose reference completion of row r is sample (r, g=0): every group then has a
  reward-1 member, and the others win only if they drew the same completion."""
  rows = {k: v.copy() for k, v in rows.items()}
  for k in ("tokens", "loss_mask"):
    rows[k][:, PROMPT:] = samples[k][::GROUP, PROMPT:]
  for k in ("segment_ids", "positions"):
    rows[k] = samples[k][::GROUP].copy()
  return rows


def _reference_loss(params64, sampled, advantages):
  """−Σ_rows A · Σ_t log q(y_t) / (sampled tokens), in whatever precision params64 has."""
  logits = STUDENT.apply({"params": params64}, sampled["tokens"], sampled["segment_ids"], sampled["positions"])
  log_q = jax.nn.log_softmax(logits[:, :-1], axis=-1)
  target = jnp.take_along_axis(log_q, sampled["tokens"][:, 1:, None], -1)[..., 0]
  mask = sampled["loss_mask"][:, 1:]
  return -jnp.sum(advantages[:, None] * target * mask) / jnp.sum(mask)


@pytest.fixture(scope="module")
def two_steps():
  """Two steps on 1 and on 8 devices from the same state and batches: {devices: (params after
  each step, metrics of each step)}, plus the initial state and the batches."""
  method = _method()
  _, _, initial = _setup(1, method)
  batches = [_with_reference(_prompts(i), _samples(initial, _prompts(i), method)) for i in range(2)]
  runs = {}
  for devices in (1, 8):
    engine, step, state = _setup(devices, method)
    state, params, metrics = engine.put_replicated(state), [], []
    for batch in batches:
      state, m = step(state, engine.put_replicated(()), engine.put_batch(batch))
      params.append(jax.device_get(engine.unreplicate(state).variables["params"]))
      metrics.append(jax.device_get(m))
    runs[devices] = (params, metrics)
  return method, initial, batches, runs


def test_loss_and_gradient_match_a_float64_reference_on_the_same_samples(two_steps):
  method, state, batches, runs = two_steps
  batch, (new_params, metrics) = batches[0], (runs[1][0][0], runs[1][1][0])
  samples = _samples(state, _prompts(0), method)
  # Reward and advantages by hand (numpy, float64) from the samples the step draws.
  done = lambda t, m: tuple(t[m > 0])
  ref = [done(t, m) for t, m in zip(batch["tokens"], batch["loss_mask"])]
  reward = np.array([float(done(t, m) == ref[i // GROUP])
                     for i, (t, m) in enumerate(zip(samples["tokens"], samples["loss_mask"]))]).reshape(BATCH, GROUP)
  assert reward[:, 0].all() and 0 < reward.mean() < 1, reward  # the example exercises both rewards
  advantages = (reward - reward.mean(1, keepdims=True)) / (reward.std(1, keepdims=True) + 1e-4)
  with jax.enable_x64(True):
    params64 = jax.tree.map(lambda p: jnp.asarray(p, jnp.float64), state.variables["params"])
    sampled64 = {k: jnp.asarray(v) for k, v in samples.items()}
    sampled64["loss_mask"] = sampled64["loss_mask"].astype(jnp.float64)
    loss, grads = jax.jit(jax.value_and_grad(_reference_loss))(params64, sampled64,
                                                               jnp.asarray(advantages.reshape(-1)))
    loss, grads = float(loss), jax.tree.map(np.asarray, grads)
  np.testing.assert_allclose(float(metrics["loss"]), loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reward"]), reward.mean(), rtol=1e-6)
  assert float(metrics["generations"]) == 1.0
  step_taken = jax.tree.map(lambda old, new: (np.asarray(old, np.float64) - new) / LR,
                            state.variables["params"], new_params)
  assert_trees_close(step_taken, grads, rtol=2e-3, atol=2e-6)


def test_eight_devices_equal_one(two_steps):
  *_, runs = two_steps
  (p1, m1), (p8, m8) = runs[1], runs[8]
  assert all(0 < float(m["reward"]) < 1 for m in m1), m1
  for a, b in zip(m1, m8):
    np.testing.assert_allclose([b["loss"], b["reward"]], [a["loss"], a["reward"]], rtol=1e-5, atol=1e-7)
  assert_trees_close(p8[-1], p1[-1], rtol=1e-5, atol=1e-6)


def test_grpo_runs_end_to_end_on_arithmetic(tmp_path):
  config = dict(
      dataset=dict(name="arithmetic", data_dir=str(tmp_path / "tfds"), download=False, seq_len=16, prompt_len=9,
                   train_split="train[:64]", eval_split="test[:32]"),
      batch_size=8, eval_batch_size=32, num_steps=3, log_every_steps=1, checkpoint_every_steps=3,
      parallel=dict(num_devices=1), model=dict(name="decoder", dim=16, depth=1, num_heads=2, num_kv_heads=1,
                                               mlp_dim=32),
      method=dict(name="grpo", group_size=4, sample_temperature=1.0))
  results = train_and_evaluate(config, str(tmp_path / "run"))
  assert np.isfinite(results["loss"]) and (tmp_path / "run" / "results.json").exists()
  train = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
           if json.loads(line)["split"] == "train"]
  assert [m["step"] for m in train] == [1, 2, 3]
  assert all(0.0 <= m["reward"] <= 1.0 and m["generations"] == m["step"] for m in train)
  ledger = json.loads((tmp_path / "run" / "ledger.json").read_text())
  assert ledger["steps"] == 3 and ledger["step_flops"] > 0
