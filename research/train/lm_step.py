"""The per-device train and eval steps for language models: step.py's counterpart on token rows.

Same programming model (one device's slice of the batch, collectives over the axis `data`) and the
same TrainState. A row is the token layout of research/data/text.py; the loss is
research/methods/lm.py's, normalised by the token count of the GLOBAL batch (a psum), so the
per-device gradients average (pmean) to exactly the single-device gradient.

On-policy steps (GKD's λ) sample the completions from the current student with the jit'd sampler
(research/sampling) inside the step; per-row keys fold the row's global index into the step's
key, so any device count draws the same samples. Method 'grpo' (outcome-reward RL, no teacher)
samples `group_size` completions per prompt the same way (key of global sample row·G + g), rewards
exact matches of the dataset's completion and weights each sampled row's log-likelihood by its
group-relative advantage (research/methods/lm.py).
"""
import jax
import jax.numpy as jnp
import optax
from jax import lax

from research import sampling
from research.errors import UserError
from research.losses import sequence
from research.methods import lm, taps
from research.teachers.signal import SIGNAL_KEYS
from research.train.state import TrainState
from research.train.step import AXIS


def make_train_step(student, teacher, method: lm.TokenDistillation, tx: optax.GradientTransformation,
                    prompt_len: int, pad_id: int, eos_id: int):
  """Returns train_step(state, teacher_variables, batch) -> (new_state, metrics).

  `teacher` is a model or None (`teacher_variables` then a 1-tuple of its variables, as the
  loader returns them); `prompt_len` the prompt columns of prompt/completion rows (the
  sampler continues from them on on-policy steps). Metrics are global token means.
  """
  if method.name == "grpo" and prompt_len <= 0:
    raise UserError("method 'grpo' samples completions of prompts, but config.dataset.prompt_len=0 "
                    "(plain text rows); use a prompt/completion dataset with dataset.prompt_len > 0.")

  def sample_rows(params, batch, sample_rng):
    local_batch, length = batch["tokens"].shape
    first_row = lax.axis_index(AXIS) * local_batch
    keys = jax.vmap(lambda i: jax.random.fold_in(sample_rng, first_row + i))(jnp.arange(local_batch))
    prompt = {k: batch[k][:, :prompt_len] for k in ("tokens", "segment_ids", "positions")}
    out = sampling.generate(student, {"params": params}, prompt["tokens"], prompt["segment_ids"],
                            prompt["positions"], keys, length - prompt_len,
                            temperature=method.sample_temperature, top_k=method.sample_top_k,
                            top_p=method.sample_top_p, stop_id=eos_id, pad_id=pad_id)
    return {k: out[k].astype(batch[k].dtype) for k in lm.FIELDS}

  def grpo_rows(params, batch, sample_rng):
    """GRPO's rows: each prompt repeated group_size (G) times with a completion sampled by the
    current student (key fold_in(sample_rng, global row · G + g)), its exact-match reward against
    the row's reference completion and its group-relative advantage, all (B·G,)."""
    group = method.group_size
    local_batch, length = batch["tokens"].shape
    first = lax.axis_index(AXIS) * local_batch * group
    keys = sampling.row_keys(sample_rng, local_batch * group, first)
    prompt = {k: jnp.repeat(batch[k][:, :prompt_len], group, axis=0)
              for k in ("tokens", "segment_ids", "positions")}
    out = sampling.generate(student, {"params": params}, prompt["tokens"], prompt["segment_ids"],
                            prompt["positions"], keys, length - prompt_len,
                            temperature=method.sample_temperature, top_k=method.sample_top_k,
                            top_p=method.sample_top_p, stop_id=eos_id, pad_id=pad_id)
    rows = {k: out[k].astype(batch[k].dtype) for k in lm.FIELDS}
    reference = {k: jnp.repeat(batch[k], group, axis=0) for k in ("tokens", "loss_mask")}
    reward = lm.exact_match_reward(rows["tokens"], rows["loss_mask"], reference["tokens"],
                                   reference["loss_mask"])
    return rows, reward, lm.group_advantages(reward.reshape(-1, group)).reshape(-1)

  def student_rows(params, batch, method_state, policy_rng, sample_rng):
    """The rows to train on: the dataset's, fresh student samples, or replayed ones."""
    data = {k: batch[k] for k in lm.FIELDS}
    u_policy, u_fresh, u_slot = jax.random.uniform(policy_rng, (3,))  # the same on every device
    on_policy = u_policy < method.on_policy_fraction
    count = lambda state, fresh: {**state, "generations": state["generations"] + fresh.astype(jnp.int32)}
    if not method.replay_size:
      rows = lax.cond(on_policy, lambda: sample_rows(params, batch, sample_rng), lambda: data)
      return rows, count(method_state, on_policy), on_policy

    def fresh(state):
      rows = sample_rows(params, batch, sample_rng)
      global_rows = lax.all_gather(rows, AXIS, tiled=True)
      buffer = jax.tree.map(lambda b, g: b.at[state["next"]].set(g), state["buffer"], global_rows)
      state = {**state, "buffer": buffer, "next": (state["next"] + 1) % method.replay_size,
               "filled": jnp.minimum(state["filled"] + 1, method.replay_size)}
      return rows, count(state, jnp.bool_(True))

    def replay(state):
      slot = jnp.minimum((u_slot * state["filled"]).astype(jnp.int32), state["filled"] - 1)
      local_batch = batch["tokens"].shape[0]
      start = lax.axis_index(AXIS) * local_batch
      rows = jax.tree.map(lambda b: lax.dynamic_slice_in_dim(b[slot], start, local_batch),
                          state["buffer"])
      return rows, state

    is_fresh = on_policy & ((u_fresh < method.replay_fresh) | (method_state["filled"] == 0))
    branch = jnp.where(is_fresh, 1, jnp.where(on_policy, 2, 0))
    rows, method_state = lax.switch(branch, [lambda s: (data, s), fresh, replay], method_state)
    return rows, method_state, on_policy

  def train_step(state: TrainState, teacher_variables, batch):
    policy_rng, sample_rng = jax.random.split(jax.random.fold_in(state.rng, state.step))
    trainable = state.trainable()
    method_state, on_policy = state.method_state, jnp.bool_(False)
    rows = {k: batch[k] for k in lm.FIELDS}
    reward = advantages = None
    if method.name == "grpo":
      rows, reward, advantages = grpo_rows(trainable["student"], batch, sample_rng)
      method_state = {**method_state, "generations": method_state["generations"] + 1}
      on_policy = jnp.bool_(True)
    elif method.on_policy_fraction:
      rows, method_state, on_policy = student_rows(trainable["student"], batch, method_state,
                                                   policy_rng, sample_rng)
      rows = jax.tree.map(lax.stop_gradient, rows)
    inputs = (rows["tokens"], rows["segment_ids"], rows["positions"])
    target_mask = rows["loss_mask"][:, 1:]
    # Local sums × scale, averaged over devices, = global sums / global token count.
    scale = lax.psum(1, AXIS) / jnp.maximum(lax.psum(jnp.sum(target_mask), AXIS), 1.0)
    teacher_out = None
    if teacher is not None:
      teacher_out = lax.stop_gradient(_forward(teacher, teacher_variables[0], inputs, method.chunk_size))
    elif "signal_log_probs" in batch:  # a level-logits teacher cache: its log-probs are logits
      teacher_out = batch["signal_log_probs"].astype(jnp.float32)
    signal = {k: batch[k] for k in SIGNAL_KEYS if k in batch}

    def loss_fn(trainable):
      variables = {**state.variables, "params": trainable["student"]}
      student_out = _forward(student, variables, inputs, method.chunk_size)
      if advantages is not None:  # GRPO: Σ_rows A · Σ_t −log q(y_t), over the global token count
        nll = sequence.next_token_nll(student_out, rows["tokens"])
        sums = {"pg": jnp.sum(jnp.where(target_mask > 0, nll * target_mask, 0) * advantages[:, None])}
        return sums["pg"] * scale, (student_out, sums)
      if method.chunk_size:
        sums = {"kd": _chunked_kd_sum(method, student_out, teacher_out, target_mask)}
      else:
        terms = method.token_terms(student_out, teacher_out, rows["tokens"], signal)
        sums = {k: jnp.sum(jnp.where(target_mask > 0, v * target_mask, 0)) for k, v in terms.items()}
      loss = (method.ce_weight * sums.get("ce", 0.0) + method.kd_weight * sums.get("kd", 0.0)) * scale
      return loss, (student_out, sums)

    (loss, (student_out, sums)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {"loss": loss, **{f"loss_{k}": v * scale for k, v in sums.items()},
               "on_policy": on_policy.astype(jnp.float32),
               "generations": method_state.get("generations", jnp.zeros((), jnp.int32)).astype(jnp.float32)}
    if reward is not None:
      metrics["reward"] = jnp.mean(reward)
    if not method.chunk_size:
      predicted = jnp.argmax(student_out[:, :-1], -1)
      metrics["accuracy"] = jnp.sum((predicted == rows["tokens"][:, 1:]) * target_mask) * scale
      if teacher_out is not None:
        agree = predicted == jnp.argmax(teacher_out[:, :-1], -1)
        metrics["teacher_agreement"] = jnp.sum(agree * target_mask) * scale
    new_state = state.replace(step=state.step + 1, opt_state=opt_state, adapters=trainable["adapters"],
                              method_state=method_state,
                              variables={**state.variables, "params": trainable["student"]})
    return new_state, lax.pmean(metrics, AXIS)

  return train_step


def _forward(model, variables, inputs, chunk_size: int):
  """Logits (B, L, V); with chunking instead (hidden states (B, L, D), unembedding (D, V)), so
  the full logits are never formed (XLA drops the unused output projection)."""
  tokens, segment_ids, positions = inputs
  if not chunk_size:
    return model.apply(variables, tokens, segment_ids, positions)
  features, _ = taps.forward(model, variables, tokens, ("penultimate",), segment_ids=segment_ids,
                             positions=positions)
  return features["penultimate"], unembedding(model, variables["params"])


def unembedding(model, params) -> jnp.ndarray:
  """The decoder's output projection (D, V): its Dense kernel, or the transposed embedding."""
  return params["Embed_0"]["embedding"].T if model.tie_embeddings else params["Dense_0"]["kernel"]


def _chunked_kd_sum(method, student_out, teacher_out, target_mask):
  (s_hidden, s_unembed), (t_hidden, t_unembed) = student_out, teacher_out
  mask = target_mask.reshape(-1)
  mean = sequence.chunked_divergence(method.divergence, s_hidden[:, :-1], s_unembed, t_hidden[:, :-1],
                                     t_unembed, mask, method.chunk_size, method.temperature, method.beta,
                                     method.alpha)
  return mean * jnp.sum(mask)


def make_eval_step(model):
  """Returns eval_step(variables, batch) -> sums over all devices of correctly predicted tokens,
  their NLL and their count (padding rows and untrained positions count for nothing)."""

  def eval_step(variables, batch):
    logits = model.apply(variables, batch["tokens"], batch["segment_ids"], batch["positions"])
    targets = batch["tokens"][:, 1:]
    mask = batch["loss_mask"][:, 1:] * batch["mask"][:, None]
    nll = sequence.next_token_nll(logits, batch["tokens"])
    sums = {"correct": jnp.sum((jnp.argmax(logits[:, :-1], -1) == targets) * mask),
            "loss": jnp.sum(jnp.where(mask > 0, nll * mask, 0)), "count": jnp.sum(mask)}
    return lax.psum(sums, AXIS)

  return eval_step
