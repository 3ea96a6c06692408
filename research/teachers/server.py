"""An OpenAI-compatible HTTP server in front of finished Distillery runs ("distilling through an API").

`serve({name: workdir}, host, port)` loads each run read-only and answers, on a stdlib
ThreadingHTTPServer in a daemon thread (field names and shapes follow the public OpenAI API):
  GET  /v1/models             the served models.
  POST /v1/completions        language models: prompt = a string, a list of strings, a list of
                              token ids or a list of token-id lists; max_tokens (default 16; 0 only
                              with echo), temperature (default 1, 0 = greedy, ≤ 2), top_p, n (≤ 16),
                              seed, logprobs (null or 0..20 top entries per position), echo.
  POST /v1/chat/completions   language models: messages rendered as "<role>: <content>\\n" each, then
                              "assistant: "; max_tokens / max_completion_tokens (default 16),
                              logprobs (bool), top_logprobs (0..20).
  POST /v1/classifications    image classifiers (a Distillery extension, not an OpenAI endpoint):
                              {"model", "input": images [N][H][W][C] in [0, 1], "temperature"
                              (default 1), "top_logprobs" (null or 1..classes), "logprobs" (bool)} →
                              {"object": "list", "data": [{"index", "label", "top_logprobs":
                              [[class, logprob], ...], "logprobs": [...]}], "usage": {"images"}}.

Tokens and log-probs. A string prompt is BOS + encode(prompt); a token-id prompt is exactly those
ids, so a client can score any token row. Generation stops at EOS, which counts as a completion
token and appears in the completions endpoint's logprobs (its probability is part of what a
student distils) but never in any text nor in the chat endpoint's logprobs.content. Log-probs are:
  * for echoed prompt tokens: the model's log-softmax at temperature 1 (the first token: null);
  * for generated tokens: of the distribution sampled from at the request temperature, before
    top_p truncation (temperature 0, greedy: the temperature-1 log-probs);
  * for classifications: log_softmax(logits / temperature).
`top_logprobs` maps token strings (research/teachers/tokens.py, exact inverses) to log-probs.
Distillery extension: "top_logprobs_ids": true on /v1/completions makes each top_logprobs entry a
list of [token_id, logprob] pairs, largest first (exact and tokenizer-independent).
`text_offset` is each token's character offset in the decoded prompt + completion text.
Log-probs of -inf are sent as -1e30 (JSON has no infinities). Row r of a request (prompt-major,
n rows per prompt) samples with key fold_in(seed, r), so the same seed and request give the same
output whatever the server's batching; without a seed a random one is drawn. `stop`, `stream`,
penalties and `logit_bias` are not implemented: anything but their inert values is a 400, as is
an unknown field (nothing is silently ignored).

Speed: prompts are left-padded to a power-of-two width ≥ 16, max_tokens and the batch rounded up
to powers of two (batches of at most max_batch rows), so repeated requests reuse compiled code;
the temperature is traced (top_p and the logprobs count are compiled in). A pure scoring request (echo, max_tokens 0) is one
forward pass. Device calls hold one lock per model.

Bad input never stops the server: 411 without Content-Length on POST, 413 (answered before reading
the body) above max_request_bytes, 400 for malformed JSON / wrong types / missing fields /
out-of-range values, 404 for an unknown path or model, 405 for a wrong method, 500 (with a JSON
body) for anything unexpected; every error body is {"error": {"message", "type", "param", "code"}},
and each is logged as one line.
"""
import dataclasses
import functools
import http
import http.server
import json
import math
import os
import socket
import threading
import time
import urllib.parse
import uuid
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from research import sampling
from research.data import pipeline, text, tokenizers
from research.errors import UserError
from research.eval import classification
from research.eval import lm as lm_eval
from research.teachers import tokens as tokens_lib

MAX_LOGPROBS = 20
MAX_N = 16
MIN_WIDTH = 16
NEG_FLOOR = -1e30


class ApiError(Exception):
  """An HTTP error answer: status, message, and the OpenAI error fields."""

  def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
    super().__init__(message)
    self.status, self.message, self.param, self.code = status, message, param, code

  def body(self) -> dict:
    kind = "server_error" if self.status >= 500 else "invalid_request_error"
    return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def _bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
  return ApiError(400, message, param, code)


# ----------------------------------------------------------------------------- request fields

_MISSING = object()


def _field(body: dict, name: str, types, default=_MISSING, what: str = ""):
  """body[name] checked against `types` (bools are never numbers); `default` when absent or null."""
  value = body.get(name)
  if value is None:
    if default is _MISSING:
      raise _bad(f"Missing required field '{name}'.", name, "missing_field")
    return default
  if isinstance(value, bool) and bool not in types or not isinstance(value, types):
    raise _bad(f"'{name}' must be {what}, got {json.dumps(value)[:80]}.", name, "invalid_type")
  return value


def _int(body, name, default, low, high=None):
  value = _field(body, name, (int,), default, "an integer")
  if value is not None and (value < low or high is not None and value > high):
    bound = f"between {low} and {high}" if high is not None else f"≥ {low}"
    raise _bad(f"'{name}'={value} is out of range: it must be {bound}.", name)
  return value


def _number(body, name, default, low, high, low_open=False):
  value = float(_field(body, name, (int, float), default, "a number"))
  if not math.isfinite(value) or value > high or value < low or (low_open and value == low):
    raise _bad(f"'{name}'={value} is out of range: it must be in {'(' if low_open else '['}{low}, {high}].", name)
  return value


def _bool(body, name, default=False):
  return _field(body, name, (bool,), default, "true or false")


def _reject_unsupported(body: dict, known: set):
  """400 for fields this server does not implement (rather than silently changing the results)."""
  inert = {"stream": False, "suffix": None, "presence_penalty": 0, "frequency_penalty": 0,
           "logit_bias": {}, "best_of": None, "stop": None, "user": None, "stream_options": None}
  for name, value in body.items():
    if name in known or name == "user":
      continue
    if name in inert:
      if value is None or value == inert[name] or (name == "best_of" and value == body.get("n", 1)):
        continue
      raise _bad(f"'{name}'={json.dumps(value)[:80]} is not supported by this server; leave it out.", name,
                 "unsupported_parameter")
    raise _bad(f"Unknown field '{name}'; this endpoint accepts {', '.join(sorted(known))}.", name,
               "unknown_parameter")


def _seed(body) -> np.ndarray:
  """The request's seed as two uint32 words (a fresh random one when absent)."""
  seed = _field(body, "seed", (int,), None, "an integer")
  if seed is None:
    seed = int.from_bytes(os.urandom(8), "little")
  seed %= 1 << 64
  return np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)


def _bucket(n: int, low: int = 1) -> int:
  """The smallest power of two ≥ max(n, low)."""
  return max(low, 1 << max(0, int(n) - 1).bit_length())


def _floats(values) -> list:
  return np.maximum(np.asarray(values, np.float64), NEG_FLOOR).tolist()


# ----------------------------------------------------------------------------- jitted model calls

@dataclasses.dataclass(frozen=True)
class _Tempered:
  """A DecoderLM whose logits are multiplied by variables['inv_t'] (a traced 1 / temperature), so
  sampling at any temperature reuses one compiled program."""
  model: Any

  def init_cache(self, *args, **kwargs):
    return self.model.init_cache(*args, **kwargs)

  def apply(self, variables, *args, **kwargs):
    out = self.model.apply(variables["model"], *args, **kwargs)
    if isinstance(out, tuple):
      return out[0].astype(jnp.float32) * variables["inv_t"], out[1]
    return out.astype(jnp.float32) * variables["inv_t"]


def _score_rows(model, variables, tokens, segment_ids, positions, inv_t, start, k):
  """Per column c ≥ 1: log p(tokens[c] | < c) and the k best (log-prob, id), at temperature 1
  before column `start` and at 1 / inv_t from it on."""
  logits = model.apply(variables, tokens, segment_ids, positions)[:, :-1].astype(jnp.float32)
  column = jnp.arange(1, tokens.shape[1])
  logits = jnp.where((column >= start)[None, :, None], logits * inv_t, logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  out = {"token_logprobs": jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1)[..., 0]}
  if k:
    out["top_values"], out["top_ids"] = jax.lax.top_k(log_probs, k)
  return out


@functools.partial(jax.jit, static_argnames=("model", "k"))
def _score(model, variables, tokens, segment_ids, positions, k):
  return _score_rows(model, variables, tokens, segment_ids, positions, 1.0, tokens.shape[1], k)


@functools.partial(jax.jit, static_argnames=("model", "new_tokens", "greedy", "top_p", "eos_id", "pad_id",
                                             "k", "score"))
def _complete(model, variables, tokens, segment_ids, positions, inv_t, seed, offset, new_tokens, greedy,
              top_p, eos_id, pad_id, k, score):
  """Samples `new_tokens` per row (keys row_keys(seed, B, offset)), then scores the rows in one pass."""
  rng = jax.random.fold_in(jax.random.PRNGKey(seed[0]), seed[1])
  keys = sampling.row_keys(rng, tokens.shape[0], offset)
  out = sampling.generate(_Tempered(model), {"model": variables, "inv_t": inv_t}, tokens, segment_ids,
                          positions, keys, new_tokens, temperature=0.0 if greedy else 1.0, top_p=top_p,
                          stop_id=eos_id, pad_id=pad_id)
  result = {"tokens": out["tokens"], "lengths": out["lengths"]}
  if score:
    result.update(_score_rows(model, variables, out["tokens"], out["segment_ids"], out["positions"], inv_t,
                              tokens.shape[1], k))
  return result


@functools.partial(jax.jit, static_argnames=("model",))
def _classify(model, variables, images, temperature):
  return jax.nn.log_softmax(model.apply(variables, images, train=False).astype(jnp.float32) / temperature, -1)


def _left_pad(prompts: list, width: int, pad_id: int):
  """Left-padded prompt layout (research/sampling/sampler.py): tokens, segment_ids, positions."""
  shape = (len(prompts), width)
  tokens, segments, positions = np.full(shape, pad_id, np.int32), np.zeros(shape, np.int32), np.zeros(shape, np.int32)
  for row, prompt in enumerate(prompts):
    tokens[row, width - len(prompt):] = prompt
    segments[row, width - len(prompt):] = 1
    positions[row, width - len(prompt):] = np.arange(len(prompt))
  return tokens, segments, positions


# ----------------------------------------------------------------------------- served models

class LanguageModel:
  """A decoder LM run: tokenisation, batched generation/scoring, per-row results."""
  kind = "language model"

  def __init__(self, workdir: str, max_batch: int):
    self.config, self.model, variables = lm_eval.load_run(workdir)
    self.variables = jax.device_put(variables)  # once, not with every request
    self.tokenizer = text.tokenizer(self.config.dataset)
    self.vocab_size = int(self.model.vocab_size)
    self.strings = [tokens_lib.token_string(self.tokenizer, i) for i in range(self.vocab_size)]
    self.bytes = [tokens_lib.token_bytes(self.tokenizer, i) for i in range(self.vocab_size)]
    self.max_batch = max_batch
    self.lock = threading.Lock()

  def encode(self, prompt: str) -> list:
    return [self.tokenizer.bos_id] + self.tokenizer.encode(prompt)

  def decode(self, ids) -> str:
    return self.tokenizer.decode(ids)

  def offsets(self, ids: list) -> list:
    """Character offset of each token in decode(ids): len(decode(ids[:i]))."""
    tok = self.tokenizer
    if not isinstance(tok, tokenizers.ByteTokenizer):
      return [len(self.decode(ids[:i])) for i in range(len(ids))]
    data = bytes(i - tok.offset for i in ids if tok.offset <= i < tok.vocab_size)
    ends = np.cumsum([0] + [tok.offset <= i < tok.vocab_size for i in ids[:-1]]).tolist()
    if data.isascii():
      return ends
    return [len(data[:end].decode("utf-8", "replace")) for end in ends]

  def run(self, prompts: list, n: int, max_tokens: int, temperature: float, top_p: float, seed, k: int | None,
          score: bool) -> list:
    """One dict per (prompt, sample) row, prompt-major: 'ids' (prompt + generated), 'prompt_len',
    'finish_reason', and with `score` 'logprobs' (per id; None for the first) and, when k, 'top'
    ([(ids, log-probs)] per id; None for the first)."""
    rows = [p for p in prompts for _ in range(n)]
    width = _bucket(max(len(p) for p in prompts), MIN_WIDTH)
    new = _bucket(max_tokens) if max_tokens else 0
    greedy = temperature == 0
    inv_t = np.float32(1.0 if greedy else 1.0 / temperature)
    pad, k = self.tokenizer.pad_id, k or 0
    results = []
    for start in range(0, len(rows), self.max_batch):
      chunk = rows[start:start + self.max_batch]
      batch = min(_bucket(len(chunk)), self.max_batch)
      layout = _left_pad(chunk + [[self.tokenizer.bos_id]] * (batch - len(chunk)), width, pad)
      out = {"tokens": layout[0]}
      if new or score:
        with self.lock:
          if new:
            out = _complete(self.model, self.variables, *layout, inv_t, seed, np.int32(start), new, greedy,
                            float(top_p), self.tokenizer.eos_id, pad, k, score)
          else:
            out = _score(self.model, self.variables, *layout, k)
          out = {key: np.asarray(value) for key, value in jax.device_get(out).items()}
      for row, prompt in enumerate(chunk):
        results.append(self._row(out, row, prompt, width, max_tokens, k, score))
    return results

  def _row(self, out, row, prompt, width, max_tokens, k, score) -> dict:
    generated = []
    if max_tokens:
      length = min(int(out["lengths"][row]), max_tokens)
      generated = out["tokens"][row, width:width + length].tolist()
    stopped = bool(generated) and generated[-1] == self.tokenizer.eos_id
    result = {"ids": list(prompt) + generated, "prompt_len": len(prompt),
              "finish_reason": "stop" if stopped else "length"}
    if score:
      before = np.arange(width - len(prompt), width + len(generated))[1:] - 1  # logit column of each id
      result["logprobs"] = [None] + _floats(out["token_logprobs"][row, before])
      if k:
        ids, values = out["top_ids"][row, before].tolist(), _floats(out["top_values"][row, before])
        result["top"] = [None] + list(zip(ids, values))
    return result


class ImageClassifier:
  """An image-classifier run: validated image batches → log-probs over its classes."""
  kind = "image classifier"

  def __init__(self, workdir: str, max_batch: int):
    self.config, self.model, variables = classification.load_run(workdir)
    self.variables = jax.device_put(variables)
    self.shape = tuple(int(d) for d in pipeline.example_shape(self.config.dataset))
    probe = jax.eval_shape(lambda v, x: self.model.apply(v, x, train=False), self.variables,
                           jax.ShapeDtypeStruct((1,) + self.shape, jnp.float32))
    self.num_classes = int(probe.shape[-1])
    self.max_batch = max_batch
    self.lock = threading.Lock()

  def log_probs(self, images: np.ndarray, temperature: float) -> np.ndarray:
    outputs = []
    for start in range(0, len(images), self.max_batch):
      chunk = images[start:start + self.max_batch]
      batch = min(_bucket(len(chunk)), self.max_batch)
      padded = np.concatenate([chunk, np.zeros((batch - len(chunk),) + self.shape, np.float32)])
      with self.lock:
        out = np.asarray(jax.device_get(_classify(self.model, self.variables, padded, np.float32(temperature))))
      outputs.append(out[:len(chunk)])
    return np.concatenate(outputs)


def load(workdir: str, max_batch: int):
  """A LanguageModel for a decoder run, else an ImageClassifier."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{workdir} is not a finished run: it has no config.json. Pass the --workdir of a run "
                    "trained with experiments/distill.py (or research.train.train_and_evaluate).")
  with open(path, encoding="utf-8") as f:
    config = json.load(f)
  is_lm = config.get("model", {}).get("name") == "decoder"
  return (LanguageModel if is_lm else ImageClassifier)(workdir, max_batch)


# ----------------------------------------------------------------------------- endpoints

class App:
  """The endpoints over a dict of served models; each returns the JSON response as a dict."""

  def __init__(self, workdirs: dict, max_request_bytes: int, max_batch: int, max_context: int):
    self.max_request_bytes, self.max_context = max_request_bytes, max_context
    self.models = {name: load(workdir, max_batch) for name, workdir in workdirs.items()}
    self.created = int(time.time())
    self.routes = {"/v1/models": ("GET", self.list_models), "/v1/completions": ("POST", self.completions),
                   "/v1/chat/completions": ("POST", self.chat), "/v1/classifications": ("POST", self.classify)}

  def _model(self, body: dict, kind):
    name = _field(body, "model", (str,), what="a string")
    if name not in self.models:
      raise ApiError(404, f"The model '{name}' does not exist; this server serves {', '.join(sorted(self.models))} "
                     "(GET /v1/models).", "model", "model_not_found")
    model = self.models[name]
    if not isinstance(model, kind):
      other = "/v1/classifications" if isinstance(model, ImageClassifier) else "/v1/completions"
      raise _bad(f"The model '{name}' is an {model.kind}; send its requests to {other}.", "model", "wrong_endpoint")
    return name, model

  def list_models(self, _body=None) -> dict:
    return {"object": "list", "data": [{"id": name, "object": "model", "created": self.created,
                                        "owned_by": "distillery"} for name in sorted(self.models)]}

  def _prompts(self, lm: LanguageModel, prompt) -> list:
    def ids(values, where):
      if not values:
        raise _bad(f"{where} is an empty token list; a prompt needs at least one token.", "prompt")
      for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < lm.vocab_size:
          raise _bad(f"{where} holds {json.dumps(value)[:40]}, which is not a token id in [0, {lm.vocab_size}).",
                     "prompt")
      return list(values)

    if isinstance(prompt, str):
      return [lm.encode(prompt)]
    if isinstance(prompt, list) and prompt:
      if all(isinstance(p, str) for p in prompt):
        return [lm.encode(p) for p in prompt]
      if all(isinstance(p, list) for p in prompt):
        return [ids(p, f"prompt[{i}]") for i, p in enumerate(prompt)]
      return [ids(prompt, "prompt")]
    raise _bad("'prompt' must be a string, a list of strings, a list of token ids or a list of token-id lists "
               "(non-empty).", "prompt", "missing_field" if prompt is None else "invalid_type")

  def _sampling(self, body: dict, prompts: list, max_tokens: int) -> dict:
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > self.max_context:
      raise _bad(f"The prompt ({longest} tokens) plus max_tokens ({max_tokens}) exceeds this server's context "
                 f"of {self.max_context} tokens; shorten the prompt or lower max_tokens.", "max_tokens",
                 "context_length_exceeded")
    return {"temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
            "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
            "n": _int(body, "n", 1, 1, MAX_N), "seed": _seed(body)}

  def completions(self, body: dict) -> dict:
    _reject_unsupported(body, {"model", "prompt", "max_tokens", "temperature", "top_p", "n", "seed", "logprobs",
                               "echo", "top_logprobs_ids"})
    name, lm = self._model(body, LanguageModel)
    prompts = self._prompts(lm, body.get("prompt"))
    max_tokens = _int(body, "max_tokens", 16, 0)
    echo, by_id = _bool(body, "echo"), _bool(body, "top_logprobs_ids")
    k = _int(body, "logprobs", None, 0, MAX_LOGPROBS)
    if max_tokens == 0 and not echo:
      raise _bad("max_tokens=0 without echo returns nothing; set echo=true to score the prompt.", "max_tokens")
    options = self._sampling(body, prompts, max_tokens)
    rows = lm.run(prompts, options["n"], max_tokens, options["temperature"], options["top_p"], options["seed"],
                  k, score=k is not None)
    choices = []
    for index, row in enumerate(rows):
      ids, first = row["ids"], 0 if echo else row["prompt_len"]
      full_text = lm.decode(ids)
      logprobs = None
      if k is not None:
        offsets = lm.offsets(ids)[first:]
        top = row.get("top") or [None] + [((), ())] * (len(ids) - 1)
        if by_id:
          top = [None if t is None else [[i, v] for i, v in zip(*t)] for t in top[first:]]
        else:
          top = [None if t is None else {lm.strings[i]: v for i, v in zip(*t)} for t in top[first:]]
        logprobs = {"tokens": [lm.strings[i] for i in ids[first:]], "token_logprobs": row["logprobs"][first:],
                    "top_logprobs": top, "text_offset": offsets}
      choices.append({"index": index, "text": full_text if echo else lm.decode(ids[row["prompt_len"]:]),
                      "logprobs": logprobs, "finish_reason": row["finish_reason"]})
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": _usage(prompts, rows)}

  def chat(self, body: dict) -> dict:
    _reject_unsupported(body, {"model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
                               "n", "seed", "logprobs", "top_logprobs"})
    name, lm = self._model(body, LanguageModel)
    prompts = [lm.encode(_render(body.get("messages")))]
    max_tokens = _int(body, "max_completion_tokens", None, 1)
    max_tokens = _int(body, "max_tokens", 16, 1) if max_tokens is None else max_tokens
    want = _bool(body, "logprobs")
    k = _int(body, "top_logprobs", None, 0, MAX_LOGPROBS)
    if k is not None and not want:
      raise _bad("'top_logprobs' requires 'logprobs': true.", "top_logprobs")
    options = self._sampling(body, prompts, max_tokens)
    rows = lm.run(prompts, options["n"], max_tokens, options["temperature"], options["top_p"], options["seed"],
                  k, score=want)
    choices = []
    for index, row in enumerate(rows):
      first = row["prompt_len"]
      generated = row["ids"][first:]
      shown = len(generated) - (row["finish_reason"] == "stop")
      logprobs = None
      if want:
        top = row.get("top") or [None] * len(row["ids"])
        logprobs = {"content": [
            {"token": lm.strings[i], "logprob": lp, "bytes": lm.bytes[i],
             "top_logprobs": [{"token": lm.strings[j], "logprob": v, "bytes": lm.bytes[j]}
                              for j, v in (zip(*top[first + t]) if top[first + t] else ())][:k or 0]}
            for t, (i, lp) in enumerate(zip(generated[:shown], row["logprobs"][first:first + shown]))]}
      choices.append({"index": index, "message": {"role": "assistant", "content": lm.decode(generated)},
                      "logprobs": logprobs, "finish_reason": row["finish_reason"]})
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": _usage(prompts, rows)}

  def classify(self, body: dict) -> dict:
    _reject_unsupported(body, {"model", "input", "temperature", "top_logprobs", "logprobs"})
    name, model = self._model(body, ImageClassifier)
    images = _field(body, "input", (list,), what="a list of images [H][W][C]")
    want_all = _bool(body, "logprobs")
    k = _int(body, "top_logprobs", None, 1, model.num_classes)
    temperature = _number(body, "temperature", 1.0, 0.0, 1e6, low_open=True)
    try:
      array = np.asarray(images, np.float32)
    except (ValueError, TypeError) as e:
      raise _bad(f"'input' must be a list of images of shape {list(model.shape)} holding numbers ({e}).",
                 "input", "invalid_type") from e
    if array.ndim != 4 or array.shape[1:] != model.shape or not len(array):
      raise _bad(f"'input' has shape {list(array.shape)}; the model '{name}' takes a non-empty list of images "
                 f"[N, {', '.join(map(str, model.shape))}].", "input", "invalid_shape")
    if not np.all((array >= 0) & (array <= 1)):
      raise _bad("'input' pixel values must be in [0, 1] (divide 8-bit images by 255).", "input")
    log_probs = model.log_probs(array, temperature)
    data = []
    for index, row in enumerate(log_probs):
      item = {"index": index, "label": int(np.argmax(row))}
      if k:
        best = np.argsort(-row, kind="stable")[:k]
        item["top_logprobs"] = [[int(c), v] for c, v in zip(best, _floats(row[best]))]
      if want_all:
        item["logprobs"] = _floats(row)
      data.append(item)
    return {"object": "list", "model": name, "data": data, "usage": {"images": len(data)}}


def _render(messages) -> str:
  """'<role>: <content>\\n' per message, then 'assistant: '."""
  if not isinstance(messages, list) or not messages:
    raise _bad("'messages' must be a non-empty list of {\"role\", \"content\"} objects.", "messages",
               "missing_field" if messages is None else "invalid_type")
  lines = []
  for i, message in enumerate(messages):
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, list):  # content parts: only text ones
      if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
        raise _bad(f"messages[{i}].content parts must all be {{\"type\": \"text\", \"text\": ...}}.", "messages")
      content = "".join(p["text"] for p in content)
    if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(content, str):
      raise _bad(f"messages[{i}] must be an object with a string 'role' and a string 'content'.", "messages")
    lines.append(f"{message['role']}: {content}\n")
  return "".join(lines) + "assistant: "


def _usage(prompts: list, rows: list) -> dict:
  prompt_tokens = sum(len(p) for p in prompts)
  completion_tokens = sum(len(r["ids"]) - r["prompt_len"] for r in rows)
  return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
          "total_tokens": prompt_tokens + completion_tokens}


# ----------------------------------------------------------------------------- HTTP

class _Handler(http.server.BaseHTTPRequestHandler):
  """Routes to App; turns every failure into a JSON error answer and one log line."""
  protocol_version = "HTTP/1.1"
  server_version = "DistilleryTeacher/1.0"

  def do_GET(self):  # pylint: disable=invalid-name
    self._handle("GET")

  def do_POST(self):  # pylint: disable=invalid-name
    self._handle("POST")

  def do_PUT(self):  # pylint: disable=invalid-name
    self._handle("PUT")

  def do_DELETE(self):  # pylint: disable=invalid-name
    self._handle("DELETE")

  def do_PATCH(self):  # pylint: disable=invalid-name
    self._handle("PATCH")

  def log_message(self, format, *args):  # pylint: disable=redefined-builtin
    logging.debug("%s %s", self.address_string(), format % args)

  def send_error(self, code, message=None, explain=None):
    """http.server's own errors (bad request line, headers too long, unknown method) in the JSON
    error shape too."""
    del explain
    self._fail(ApiError(code, message or http.HTTPStatus(code).phrase, None, "bad_http_request"), close=True)

  def handle_expect_100(self):
    """'Expect: 100-continue' with an oversize Content-Length gets 413 before the body is sent."""
    length = self.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > self.server.app.max_request_bytes:
      self._fail(ApiError(413, self._too_large(int(length)), None, "request_too_large"), close=True)
      return False
    return super().handle_expect_100()

  def _too_large(self, length: int) -> str:
    return (f"The request body has {length} bytes, over this server's limit of {self.server.app.max_request_bytes}; "
            "send fewer or shorter prompts per request.")

  def _handle(self, method: str):
    app = self.server.app
    read = False
    try:
      path = urllib.parse.urlsplit(self.path).path.rstrip("/")
      if path not in app.routes:
        raise ApiError(404, f"Unknown path {path or '/'}; this server answers {', '.join(app.routes)}.", None,
                       "unknown_url")
      allowed, endpoint = app.routes[path]
      if method != allowed:
        raise ApiError(405, f"{path} takes {allowed} requests, not {method}.", None, "method_not_allowed")
      body = None
      if method == "POST":
        body, read = self._read_json(), True
      self._send(200, endpoint(body))
    except ApiError as e:
      self._fail(e, close=not read and method != "GET", drain=e.status == 413)
    except Exception as e:  # pylint: disable=broad-except  # the server must keep serving
      self._fail(ApiError(500, f"Internal error ({type(e).__name__}: {e}); the server is still running.", None,
                          "internal_error"))

  def _read_json(self) -> dict:
    length = self.headers.get("Content-Length")
    if length is None:
      raise ApiError(411, "POST requests need a Content-Length header (chunked bodies are not accepted).", None,
                     "length_required")
    if not length.strip().isdigit():
      raise _bad(f"Content-Length {length!r} is not a byte count.", None, "invalid_header")
    length = int(length)
    if length > self.server.app.max_request_bytes:
      raise ApiError(413, self._too_large(length), None, "request_too_large")
    data = self.rfile.read(length)
    if len(data) < length:
      raise _bad(f"The body ended after {len(data)} of {length} bytes.", None, "incomplete_body")
    try:
      body = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
      raise _bad(f"The body is not valid JSON ({e}); send a JSON object.", None, "invalid_json") from e
    if not isinstance(body, dict):
      raise _bad("The body must be a JSON object.", None, "invalid_json")
    return body

  def _send(self, status: int, payload: dict, close: bool = False):
    data = json.dumps(payload, allow_nan=False).encode("utf-8")
    self.send_response(status)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    if close:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(data)

  def _fail(self, error: ApiError, close: bool = False, drain: bool = False):
    """Answers `error` (one log line); `close` ends the connection (its body was not read), `drain`
    also discards what the client still sends."""
    logging.warning("%s %s -> %d %s", getattr(self, "command", None), str(getattr(self, "path", ""))[:200],
                    error.status, error.message[:300])
    try:
      self._send(error.status, error.body(), close=close or drain)
      if drain:
        self._discard_input()
    except OSError:
      self.close_connection = True

  def _discard_input(self, seconds: float = 2.0):
    """After answering without reading the body: stop writing and drop what the client still sends
    (for at most `seconds`), so closing the socket does not reset the connection before the client
    has read the answer (a "lingering close")."""
    try:
      self.connection.shutdown(socket.SHUT_WR)
      self.connection.settimeout(0.25)
      deadline = time.monotonic() + seconds
      while time.monotonic() < deadline and self.connection.recv(1 << 16):
        pass
    except OSError:
      pass


class TeacherServer:
  """A running server: .url (ending in /v1), .port, .app, .shutdown()."""

  def __init__(self, app: App, host: str, port: int):
    self.app = app
    self._httpd = http.server.ThreadingHTTPServer((host, port), _Handler)
    self._httpd.daemon_threads = True
    self._httpd.app = app
    self.host, self.port = host, self._httpd.server_address[1]
    shown = f"[{host}]" if ":" in host else host
    self.url = f"http://{shown}:{self.port}/v1"
    self._thread = threading.Thread(target=self._httpd.serve_forever, name="teacher-server", daemon=True)
    self._thread.start()

  def shutdown(self):
    self._httpd.shutdown()
    self._httpd.server_close()
    self._thread.join()


def serve(workdirs: dict, host: str = "127.0.0.1", port: int = 0, max_request_bytes: int = 1_000_000,
          max_batch: int = 64, max_context: int = 1024) -> TeacherServer:
  """Loads the runs {model name: workdir} and serves them at http://host:port/v1 (port 0: a free
  one) from a daemon thread."""
  app = App(workdirs, max_request_bytes=max_request_bytes, max_batch=max_batch, max_context=max_context)
  return TeacherServer(app, host, port)
