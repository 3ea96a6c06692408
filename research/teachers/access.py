"""Asking a teacher the labelling questions, in this process or through its OpenAI-compatible API.

Both kinds of teacher answer the same three questions, so the labelling script
(experiments/label_with_teacher.py) and the access-level studies do not care where the teacher is:

  score(rows, k)           language models: per position t of each row, the teacher's view of
                           token t + 1 — its full log-probs (k = 0) or its top-k (ids, log-probs)
  continue_rows(rows, …)   language models: the rows' prompts continued by the teacher's samples,
                           with the log-prob of each sampled token (the 'sample'/'text' levels)
  classify(images, …)      image classifiers: log-probs of every class (k = 0) or the top k

Each keeps a `usage` dict for the compute ledger: teacher_forward_flops (in process: XLA's cost
analysis of the teacher's forward, per call), api_queries and api_tokens (through the API).
"""
import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.data import text
from research.errors import UserError
from research.eval import lm as lm_eval
from research.teachers import codec, signal, tokens as token_strings
from research.train import checkpoint, ledger


class LocalTeacher:
  """A finished run's model, read-only, in this process."""

  def __init__(self, workdir: str):
    from research import config as config_lib, models  # pylint: disable=import-outside-toplevel
    self.workdir = str(pathlib.Path(workdir).expanduser().absolute())
    self.config = config_lib.resolve(json.loads((pathlib.Path(self.workdir) / "config.json").read_text()))
    self.is_text = self.config.model.name == "decoder"
    if self.is_text:
      _, self.model, self.variables = lm_eval.load_run(self.workdir)
    else:
      from research.data import pipeline  # pylint: disable=import-outside-toplevel
      self.model = models.build(self.config.model)
      self.variables = checkpoint.load_model_variables(
          self.workdir, self.model, pipeline.example_shape(self.config.dataset), "teacher", np.float32)
    self.name, self.source = self.workdir, "in-process"
    self.usage = {"teacher_forward_flops": 0.0, "api_queries": 0, "api_tokens": 0}
    self._flops = {}

  @functools.cached_property
  def digest(self) -> str:
    """The checkpoint digest for provenance; read (all weight files) only when a cache is written."""
    return signal.checkpoint_digest(self.workdir)

  def _count(self, fn, *args) -> None:
    shapes = tuple(np.shape(a) for a in jax.tree.leaves(args[1:]))
    if shapes not in self._flops:
      self._flops[shapes] = ledger.lowered_flops(fn, args)
    self.usage["teacher_forward_flops"] += self._flops[shapes]

  def score(self, rows: dict, k: int = 0, batch_size: int = 64):
    """(N, L, V) float32 log-probs (k = 0), or top-k (ids, log-probs) each (N, L, k)."""
    outputs = []
    for start in range(0, len(rows["tokens"]), batch_size):
      batch = tuple(jnp.asarray(rows[key][start:start + batch_size]) for key in ("tokens", "segment_ids", "positions"))
      self._count(_lm_log_probs, self.model, self.variables, batch, k)
      outputs.append(jax.device_get(_lm_log_probs(self.model, self.variables, batch, k)))
    return np.concatenate(outputs) if not k else tuple(np.concatenate(o) for o in zip(*outputs))

  def continue_rows(self, rows: dict, prompt_len: int, temperature: float, top_p: float, seed: int,
                    eos_id: int, pad_id: int, batch_size: int = 64) -> dict:
    """Rows with columns ≥ prompt_len sampled by the teacher; 'sample_log_probs' per column."""
    outputs = []
    for number, start in enumerate(range(0, len(rows["tokens"]), batch_size)):
      batch = {k: v[start:start + batch_size] for k, v in rows.items()}
      keys = sampling.row_keys(jax.random.fold_in(jax.random.PRNGKey(seed), number), len(batch["tokens"]))
      outputs.append(lm_eval.continue_rows(self.model, self.variables, batch, prompt_len, keys, eos_id, pad_id,
                                           temperature, 0, top_p, with_log_probs=True))
      # The sampler's cost: one forward per row and generated column (prefill + decode steps).
      self._count(_lm_log_probs, self.model, self.variables,
                  tuple(jnp.asarray(batch[key]) for key in ("tokens", "segment_ids", "positions")), 0)
    return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

  def classify(self, images: np.ndarray, temperature: float = 1.0, k: int = 0, batch_size: int = 500):
    """Log-probs (N, C) of softmax(logits / T) (k = 0), or top-k (ids, log-probs) each (N, k)."""
    outputs = []
    for start in range(0, len(images), batch_size):
      batch = jnp.asarray(images[start:start + batch_size], jnp.float32) / 255.0
      self._count(_classify, self.model, self.variables, batch, float(temperature), k)
      outputs.append(jax.device_get(_classify(self.model, self.variables, batch, float(temperature), k)))
    return np.concatenate(outputs) if not k else tuple(np.concatenate(o) for o in zip(*outputs))


def _lm_log_probs_impl(model, variables, batch, k):
  logits = model.apply(variables, *batch)
  return codec.topk_from_logits(logits, k) if k else jax.nn.log_softmax(logits.astype(jnp.float32), -1)


def _classify_impl(model, variables, images, temperature, k):
  logits = model.apply(variables, images, train=False).astype(jnp.float32) / temperature
  return codec.topk_from_logits(logits, k) if k else jax.nn.log_softmax(logits, -1)


_lm_log_probs = jax.jit(_lm_log_probs_impl, static_argnames=("model", "k"))
_classify = jax.jit(_classify_impl, static_argnames=("model", "temperature", "k"))


class ApiTeacher:
  """A teacher behind an OpenAI-compatible API (experiments/serve_teacher.py or any server with the
  same fields), through a research.teachers.client.TeacherClient (budget, retries, response cache).
  Language-model questions need the tokenizer the API's model uses."""

  def __init__(self, client, tokenizer=None, images_per_query: int = 50):
    self.client, self.tokenizer, self.images_per_query = client, tokenizer, images_per_query
    self.name, self.source, self.digest = client.model, client.base_url, ""

  @property
  def usage(self) -> dict:
    used = self.client.usage
    return {"teacher_forward_flops": 0.0, "api_queries": used["queries"], "api_tokens": used["tokens"]}

  def score(self, rows: dict, k: int, batch_size: int = 64):
    """Top-k per position from echo scoring of each segment of each row (one query per segment):
    the API's top_logprobs at token j describe token j given < j, i.e. position j − 1."""
    if not 0 < k <= 20:
      raise UserError(f"Through an API the teacher reveals top-k log-probs with 1 ≤ k ≤ 20 (asked k={k}); "
                      "full logits need the teacher in process (--teacher=WORKDIR).")
    n, length = rows["tokens"].shape
    spans = [(i, np.flatnonzero(rows["segment_ids"][i] == s)) for i in range(n)
             for s in np.unique(rows["segment_ids"][i]) if s > 0]
    bodies = [{"prompt": [int(t) for t in rows["tokens"][i, cols]], "max_tokens": 0, "echo": True,
               "logprobs": k, "top_logprobs_ids": True} for i, cols in spans]
    responses = self.client.post("/completions", bodies)
    ids = np.zeros((n, length, k), np.int32)
    log_probs = np.full((n, length, k), -codec.MAX_NATS, np.float32)
    for (i, cols), response in zip(spans, responses):
      top = response["choices"][0]["logprobs"]["top_logprobs"]
      for j in range(1, len(cols)):
        pairs = top[j] or []
        ids[i, cols[j - 1], :len(pairs)] = [p[0] for p in pairs]
        log_probs[i, cols[j - 1], :len(pairs)] = [p[1] for p in pairs]
    return ids, log_probs

  def continue_rows(self, rows: dict, prompt_len: int, temperature: float, top_p: float, seed: int,
                    eos_id: int, pad_id: int, batch_size: int = 64) -> dict:
    """The prompts' continuations sampled by the API (seed + row index per request), laid out as
    research/data/text.py rows; an EOS the API stopped at is appended (its log-prob is not
    returned by the API: 0)."""
    n, length = rows["tokens"].shape
    bodies = [{"prompt": [int(t) for t in rows["tokens"][i, :prompt_len][rows["segment_ids"][i, :prompt_len] > 0]],
               "max_tokens": length - prompt_len, "temperature": temperature, "top_p": top_p,
               "seed": seed * 1_000_003 + i, "logprobs": 0} for i in range(n)]
    responses = self.client.post("/completions", bodies)
    out = {k: np.array(rows[k]) for k in text.KEYS}
    out["sample_log_probs"] = np.zeros((n, length), np.float32)
    for i, response in enumerate(responses):
      choice = response["choices"][0]
      logprobs = choice["logprobs"] or {"tokens": [], "token_logprobs": []}
      new = [token_strings.token_id(self.tokenizer, t) for t in logprobs["tokens"]]
      lps = list(logprobs["token_logprobs"])
      if choice.get("finish_reason") == "stop" and (not new or new[-1] != eos_id):
        new, lps = new + [eos_id], lps + [0.0]
      new, lps = new[:length - prompt_len], lps[:length - prompt_len]
      cols = slice(prompt_len, prompt_len + len(new))
      for key, fill in (("tokens", pad_id), ("segment_ids", 0), ("positions", 0), ("loss_mask", 0)):
        out[key][i, prompt_len:] = fill
      last = out["positions"][i, prompt_len - 1]
      out["tokens"][i, cols] = new
      out["segment_ids"][i, cols] = out["segment_ids"][i, prompt_len - 1]
      out["positions"][i, cols] = last + 1 + np.arange(len(new))
      out["loss_mask"][i, cols] = 1.0
      out["sample_log_probs"][i, cols] = lps
    return out

  def classify(self, images: np.ndarray, temperature: float = 1.0, k: int = 0):
    """Log-probs (N, C) (k = 0: 'logprobs': true) or top-k (ids, log-probs), `images_per_query`
    images a query (the server bounds a request's bytes)."""
    bodies, size = [], self.images_per_query
    for start in range(0, len(images), size):
      body = {"input": (images[start:start + size].astype(np.float32) / 255.0).round(6).tolist(),
              "temperature": temperature}
      body.update({"top_logprobs": k} if k else {"logprobs": True})
      bodies.append(body)
    data = [item for response in self.client.post("/classifications", bodies) for item in response["data"]]
    if not k:
      return np.asarray([item["logprobs"] for item in data], np.float32)
    return (np.asarray([[p[0] for p in item["top_logprobs"]] for item in data], np.int32),
            np.asarray([[p[1] for p in item["top_logprobs"]] for item in data], np.float32))
