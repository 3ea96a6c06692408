"""Evaluate language-model students the way the LM distillation papers do.

- `load_run(workdir)`: a finished run's (config, model, variables), read-only.
- `complete(...)`: the model's completions of a split's prompts (sampled, greedy or beam), in the
  token-row layout of research/data/text.py (the completion columns replaced); `decode_texts(...)`
  the same as strings.
- `score(...)`: per-row sum of −log p(token) under a model over the rows' trained tokens: with the
  teacher as the scorer this is GKD's "teacher-scored NLL" of student samples.
- `distinct_n(...)`: the fraction of distinct n-grams among all n-grams of the completions, so a
  student that wins the NLL by repeating one likely phrase is seen (GKD reports it too).
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from research import config as config_lib
from research import models, sampling
from research.data import text
from research.losses import sequence
from research.train import checkpoint


def load_run(workdir: str):
  """Returns (config, model, variables) of the language-model run in `workdir`, read-only."""
  config = config_lib.resolve(json.loads((pathlib.Path(workdir) / "config.json").read_text()))
  model = models.build(config.model, text.tokenizer(config.dataset).vocab_size)
  variables = checkpoint.load_model_variables(workdir, model, text.example_shape(config.dataset),
                                              what="run", dtype=np.int32)
  return config, model, variables


def _batches(rows: dict, batch_size: int):
  """Rows in order, in batches of `batch_size` (the last padded with copies of row 0), with the
  number of real rows in each."""
  n = len(rows["tokens"])
  for start in range(0, n, batch_size):
    index = np.arange(start, start + batch_size)
    real = int(np.sum(index < n))
    index = np.where(index < n, index, 0)
    yield {k: v[index] for k, v in rows.items()}, real


_PROMPT = ("tokens", "segment_ids", "positions")


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "eos_id", "pad_id", "temperature",
                                             "top_k", "top_p", "beam_size"))
def _continue(model, variables, prompt, keys, new_tokens, eos_id, pad_id, temperature, top_k, top_p,
              beam_size):
  """One batch of completions; jitted once per model and decoding setting, whatever the variables
  (so sweeping a run's checkpoints compiles once)."""
  args = (model, variables, prompt["tokens"], prompt["segment_ids"], prompt["positions"])
  if beam_size:
    return sampling.beam_search(*args, beam_size=beam_size, max_new_tokens=new_tokens, stop_id=eos_id,
                                pad_id=pad_id)
  return sampling.generate(*args, keys, new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           stop_id=eos_id, pad_id=pad_id)


def continue_rows(model, variables, rows: dict, prompt_len: int, keys, eos_id: int, pad_id: int,
                  temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, beam_size: int = 0,
                  with_log_probs: bool = False) -> dict:
  """`rows` (one batch) with columns ≥ prompt_len replaced by the model's completion, drawn with the
  per-row `keys` (sampling.row_keys); the token-row layout of research/data/text.py, plus the
  sampler's 'sample_log_probs' (of each generated token, in its column) with `with_log_probs`."""
  prompt = {k: jnp.asarray(rows[k][:, :prompt_len]) for k in _PROMPT}
  out = jax.device_get(_continue(model, variables, prompt, keys, rows["tokens"].shape[1] - prompt_len, eos_id,
                                 pad_id, float(temperature), int(top_k), float(top_p), int(beam_size)))
  result = {k: np.asarray(out[k]).astype(rows[k].dtype) for k in text.KEYS}
  if with_log_probs:
    result["sample_log_probs"] = np.asarray(out["sample_log_probs"], np.float32)
  return result


def complete(model, variables, rows: dict, prompt_len: int, rng, eos_id: int, pad_id: int,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, beam_size: int = 0,
             batch_size: int = 64) -> dict:
  """The model's completions of the prompts in `rows` (N, L): the same layout and width, columns
  ≥ prompt_len generated; temperature 0 = greedy; beam_size > 0 = beam search (no sampling).
  Batch b's row keys are row_keys(fold_in(rng, b))."""
  outputs = {k: [] for k in text.KEYS}
  for number, (batch, real) in enumerate(_batches(rows, batch_size)):
    keys = sampling.row_keys(jax.random.fold_in(rng, number), batch_size)
    out = continue_rows(model, variables, batch, prompt_len, keys, eos_id, pad_id, temperature, top_k, top_p,
                        beam_size)
    for k in outputs:
      outputs[k].append(out[k][:real])
  return {k: np.concatenate(v) for k, v in outputs.items()}


def decode_texts(model, variables, dataset_config, split: str, limit: int = 0, select=None, seed: int = 0,
                 batch_size: int = 64, **decoding) -> tuple:
  """The model's completions of the prompts of `split` as text: ([(prompt, reference)], [output]),
  the output without EOS. `limit` > 0 keeps the first `limit` examples, `select(prompt)` a subset;
  `decoding` goes to `complete` (temperature, top_k, top_p, beam_size)."""
  rows, pairs = text.rows(dataset_config, split), text.prompts(dataset_config, split)
  keep = np.ones(len(pairs), bool) if select is None else np.array([bool(select(p)) for p, _ in pairs])
  if limit:
    keep &= np.arange(len(pairs)) < limit
  rows = {k: v[keep] for k, v in rows.items()}
  pairs = [pair for pair, kept in zip(pairs, keep) if kept]
  tokenizer = text.tokenizer(dataset_config)
  out = complete(model, variables, rows, dataset_config.prompt_len, jax.random.PRNGKey(seed), tokenizer.eos_id,
                 tokenizer.pad_id, batch_size=batch_size, **decoding)
  outputs = [tokenizer.decode([int(i) for i in ids if i != tokenizer.eos_id]) for ids in completion_tokens(out)]
  return pairs, outputs


@functools.partial(jax.jit, static_argnames=("model",))
def _row_nll(model, variables, batch):
  logits = model.apply(variables, batch["tokens"], batch["segment_ids"], batch["positions"])
  token_nll = sequence.next_token_nll(logits, batch["tokens"])
  mask = batch["loss_mask"][:, 1:]
  return jnp.sum(jnp.where(mask > 0, token_nll * mask, 0), axis=1), jnp.sum(mask, axis=1)


def score(model, variables, rows: dict, batch_size: int = 64) -> tuple:
  """(NLL sum per row, trained tokens per row) of `rows` under `model`: Σ −log p(tokens[t] | <t)
  over positions with loss_mask 1, in nats."""
  sums, counts = [], []
  for batch, real in _batches(rows, batch_size):
    total, count = jax.device_get(_row_nll(model, variables, {k: jnp.asarray(batch[k]) for k in text.KEYS}))
    sums.append(np.asarray(total)[:real])
    counts.append(np.asarray(count)[:real])
  return np.concatenate(sums), np.concatenate(counts)


def completion_tokens(rows: dict) -> list:
  """Each row's trained (generated) tokens, as lists of ids."""
  return [list(t[m > 0]) for t, m in zip(rows["tokens"], rows["loss_mask"])]


def distinct_n(sequences: list, n: int = 4) -> float:
  """Distinct n-grams / all n-grams over `sequences` (lists of ids); 0 if there are none."""
  grams = [tuple(s[i:i + n]) for s in sequences for i in range(len(s) - n + 1)]
  return len(set(grams)) / len(grams) if grams else 0.0
