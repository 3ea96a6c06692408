"""The OpenAI-compatible teacher server and the labelling client, over real loopback HTTP.

One server per module serves a tiny decoder LM (5 steps on synthetic arithmetic) and a tiny MLP
(5 steps on mnist5k). Checked against the models run in-process: echo scoring equals log_softmax
of model.apply at every position and its top_logprobs are exactly the k best (as ids and as
strings); greedy completions equal research.sampling.generate; seeds reproduce; chat log-probs;
classification log-probs. Bad requests get the right status and the OpenAI error shape and the
server keeps serving. The client's cache, budget, retries and rate limit are measured on real
servers (the retry test runs a small stdlib server that fails on purpose).
"""
import http.client
import http.server
import json
import socket
import threading
import time

import jax
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from research import sampling
from research.data import tokenizers
from research.errors import UserError
from research.eval import classification
from research.eval import lm as lm_eval
from research.teachers import client as client_lib
from research.teachers import server as server_lib
from research.teachers import tokens
from research.train.loop import train_and_evaluate

LIMIT = 100_000  # the test server's max_request_bytes


def _train(config: dict, workdir: str) -> str:
  train_and_evaluate(dict(config, num_steps=5, parallel=dict(num_devices=1)), workdir)
  return workdir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data_dir):
  lm_dir = _train(dict(dataset=dict(name="arithmetic", data_dir=str(tmp_path_factory.mktemp("lm_tfds")),
                                    download=False, seq_len=48, prompt_len=24, eval_split="test[:16]"),
                       batch_size=16, eval_batch_size=16,
                       model=dict(name="decoder", dim=32, depth=1, num_heads=2, num_kv_heads=2, mlp_dim=64)),
                  str(tmp_path_factory.mktemp("lm_teacher")))
  image_dir = _train(dict(dataset=dict(name="mnist5k", data_dir=data_dir, download=False, eval_split="test[:100]"),
                          batch_size=32, eval_batch_size=100, model=dict(name="mlp", widths=(16,))),
                     str(tmp_path_factory.mktemp("image_teacher")))
  return {"lm": lm_dir, "digits": image_dir}


@pytest.fixture(scope="module")
def server(runs):
  running = server_lib.serve(runs, max_request_bytes=LIMIT, max_batch=8)
  yield running
  running.shutdown()


@pytest.fixture(scope="module")
def lm(runs):
  _, model, variables = lm_eval.load_run(runs["lm"])
  return model, variables


def _request(server, method: str, path: str, body=None, headers=None):
  """(status, parsed JSON) of one raw HTTP request; `body` bytes are sent as they are."""
  connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
  data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
  connection.request(method, path, body=data, headers=headers or {})
  response = connection.getresponse()
  status, payload = response.status, json.loads(response.read())
  connection.close()
  return status, payload


def _post(server, path, body):
  return _request(server, "POST", "/v1" + path, body, {"Content-Type": "application/json"})


def _log_softmax(logits) -> np.ndarray:
  logits = np.asarray(logits, np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


@pytest.fixture(scope="module")
def reference(lm):
  """ids → (len(ids) - 1, V) float64 log-probs of each next token: the row alone, right-padded to
  64 columns (padding is segment 0, unseen by the real tokens), one jitted forward pass."""
  model, variables = lm
  apply = jax.jit(model.apply)

  def log_probs(ids: list) -> np.ndarray:
    tokens, segments = np.zeros((1, 64), np.int32), np.zeros((1, 64), np.int32)
    tokens[0, :len(ids)], segments[0, :len(ids)] = ids, 1
    logits = apply(variables, tokens, segments, np.arange(64, dtype=np.int32)[None])
    return np.asarray(logits, np.float64)[0, :len(ids) - 1]

  return log_probs


def test_token_strings_round_trip_over_the_byte_vocabulary():
  tok = tokenizers.ByteTokenizer()
  strings = [tokens.token_string(tok, i) for i in range(tok.vocab_size)]
  assert len(set(strings)) == tok.vocab_size
  assert [tokens.token_id(tok, s) for s in strings] == list(range(tok.vocab_size))
  assert strings[:3] == ["<pad>", "<bos>", "<eos>"]
  assert strings[ord("a") + 3] == "a" and strings[0xe2 + 3] == "bytes:\\xe2" and strings[10 + 3] == "bytes:\\x0a"
  assert tokens.token_bytes(tok, 0xe2 + 3) == [0xe2] and tokens.token_bytes(tok, 1) == list(b"<bos>")
  assert tokens.token_string(tok, 300) == "<unused_300>" and tokens.token_id(tok, "<unused_300>") == 300
  for bad in ("ab", "bytes:\\x41", "<unused_5>", ""):
    with pytest.raises(UserError, match="not a token"):
      tokens.token_id(tok, bad)


def test_token_strings_round_trip_over_a_byte_level_bpe_vocabulary(tmp_path):
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
  bpe.train_from_iterator(["hello wörld 12+7=19"] * 20, trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  bpe.save(str(tmp_path / "tokenizer.json"))
  tok = tokenizers.build(str(tmp_path / "tokenizer.json"))
  strings = [tokens.token_string(tok, i) for i in range(tok.vocab_size)]
  assert [tokens.token_id(tok, s) for s in strings] == list(range(tok.vocab_size))
  ids = tok.encode("hello wörld é")
  assert bytes(b for i in ids for b in tokens.token_bytes(tok, i)) == "hello wörld é".encode()


def test_models_lists_both(server):
  status, payload = _request(server, "GET", "/v1/models")
  assert status == 200 and payload["object"] == "list"
  assert {m["id"] for m in payload["data"]} == {"lm", "digits"}
  assert all(m["object"] == "model" and m["owned_by"] == "distillery" for m in payload["data"])


def test_echo_scoring_equals_the_models_log_softmax_and_its_top_k(server, reference):
  rows = [[1, 20, 52, 54, 46, 55, 2, 40], [1, 7], list(range(3, 17))]
  status, by_id = _post(server, "/completions", dict(model="lm", prompt=rows, max_tokens=0, echo=True,
                                                     logprobs=5, top_logprobs_ids=True))
  assert status == 200
  _, by_string = _post(server, "/completions", dict(model="lm", prompt=rows, max_tokens=0, echo=True, logprobs=5))
  tok = tokenizers.ByteTokenizer()
  for ids, choice, named in zip(rows, by_id["choices"], by_string["choices"]):
    log_probs = _log_softmax(reference(ids))
    logprobs = choice["logprobs"]
    assert logprobs["tokens"] == [tokens.token_string(tok, i) for i in ids]
    assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
    np.testing.assert_allclose(logprobs["token_logprobs"][1:], log_probs[np.arange(len(ids) - 1), ids[1:]],
                               atol=1e-5)
    named_tops = named["logprobs"]["top_logprobs"][1:]
    for position, (top, top_named) in enumerate(zip(logprobs["top_logprobs"][1:], named_tops)):
      best = np.argsort(-log_probs[position], kind="stable")[:5]
      assert [i for i, _ in top] == best.tolist()
      np.testing.assert_allclose([v for _, v in top], log_probs[position, best], atol=1e-5)
      assert {tokens.token_id(tok, s): v for s, v in top_named.items()} == dict(map(tuple, top))
    assert choice["text"] == tok.decode(ids) and choice["finish_reason"] == "length"
  assert by_id["usage"] == {"prompt_tokens": sum(map(len, rows)), "completion_tokens": 0,
                            "total_tokens": sum(map(len, rows))}


def test_greedy_completion_equals_the_sampler_and_seeds_reproduce(server, lm, reference):
  model, variables = lm
  tok = tokenizers.ByteTokenizer()
  prompt = "12+7="
  status, greedy = _post(server, "/completions", dict(model="lm", prompt=prompt, max_tokens=6, temperature=0,
                                                      logprobs=2, n=2))
  assert status == 200
  ids = np.asarray([[tok.bos_id] + tok.encode(prompt)], np.int32)
  greedy_generate = jax.jit(lambda *args: sampling.generate(model, variables, *args, 6, temperature=0.0,
                                                           stop_id=tok.eos_id))
  out = greedy_generate(ids, np.ones_like(ids), np.arange(ids.shape[1])[None],
                        sampling.row_keys(jax.random.PRNGKey(0), 1))
  generated = [int(t) for t in np.asarray(out["tokens"])[0, ids.shape[1]:][:int(out["lengths"][0])]]
  assert [c["index"] for c in greedy["choices"]] == [0, 1]
  choice = greedy["choices"][1]
  assert choice["text"] == tok.decode(generated) == greedy["choices"][0]["text"]
  assert [tokens.token_id(tok, s) for s in choice["logprobs"]["tokens"]] == generated
  assert greedy["usage"]["completion_tokens"] == 2 * len(generated)
  # Greedy tokens are the argmax, reported with temperature-1 log-probs of the whole row.
  expected = _log_softmax(reference(ids[0].tolist() + generated))[ids.shape[1] - 1:]
  np.testing.assert_allclose(choice["logprobs"]["token_logprobs"], expected.max(-1), atol=1e-5)

  # A longer prompt and logprobs=3: the same compiled shapes as the chat test's request.
  prompt = "12+7=19\n3+4=7\n5+6="
  sample = lambda seed, temperature=1.0: _post(server, "/completions", dict(
      model="lm", prompt=prompt, max_tokens=8, temperature=temperature, seed=seed, logprobs=3))[1]
  first, again, other = sample(1), sample(1), sample(2)
  text = lambda response: response["choices"][0]["text"]
  assert text(first) == text(again) and text(first) != text(other)
  # Sampled tokens' log-probs are those of the distribution sampled from (temperature 0.5 here).
  hot = sample(3, temperature=0.5)["choices"][0]["logprobs"]
  start = 1 + len(prompt)
  row = [tok.bos_id] + tok.encode(prompt) + [tokens.token_id(tok, s) for s in hot["tokens"]]
  expected = _log_softmax(reference(row)[start - 1:] / 0.5)[np.arange(len(hot["tokens"])), row[start:]]
  np.testing.assert_allclose(hot["token_logprobs"], expected, atol=1e-4)


def test_chat_returns_logprobs_content(server):
  status, payload = _post(server, "/chat/completions", dict(
      model="lm", messages=[{"role": "user", "content": "3+4="}], max_tokens=5, logprobs=True, top_logprobs=3,
      seed=0))
  assert status == 200 and payload["object"] == "chat.completion"
  choice = payload["choices"][0]
  assert choice["message"]["role"] == "assistant" and isinstance(choice["message"]["content"], str)
  content = choice["logprobs"]["content"]
  assert 0 < len(content) <= 5 or choice["finish_reason"] == "stop"
  for entry in content:
    assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
    assert 1 <= len(entry["top_logprobs"]) <= 3 and entry["logprob"] <= 0
    assert entry["top_logprobs"][0]["logprob"] >= entry["logprob"] - 1e-6
  assert payload["usage"]["prompt_tokens"] == 1 + len("user: 3+4=\nassistant: ")


def test_classification_log_probs_equal_the_models(server, runs):
  _, model, variables = classification.load_run(runs["digits"])
  images = np.random.default_rng(0).random((3, 28, 28, 1)).astype(np.float32)
  status, payload = _post(server, "/classifications", dict(model="digits", input=images.tolist(), temperature=2.0,
                                                           top_logprobs=3, logprobs=True))
  assert status == 200 and payload["usage"] == {"images": 3}
  reference = _log_softmax(np.asarray(model.apply(variables, images, train=False), np.float64) / 2.0)
  for row, item in zip(reference, payload["data"]):
    best = np.argsort(-row)[:3]
    assert item["label"] == int(best[0]) and [c for c, _ in item["top_logprobs"]] == best.tolist()
    np.testing.assert_allclose([v for _, v in item["top_logprobs"]], row[best], atol=1e-5)
    np.testing.assert_allclose(item["logprobs"], row, atol=1e-5)


def _oversize(server) -> tuple:
  """Sends a real body over the limit (from a second thread) and reads the answer."""
  body = b"x" * (LIMIT + 50_000)
  sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
  head = (f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          f"Content-Length: {len(body)}\r\n\r\n").encode()

  def send():
    try:
      sock.sendall(head + body)
    except OSError:
      pass

  sender = threading.Thread(target=send)
  sender.start()
  response = http.client.HTTPResponse(sock)
  response.begin()
  status, payload = response.status, json.loads(response.read())
  sender.join()
  sock.close()
  return status, payload


def _no_length(server) -> tuple:
  connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
  connection.putrequest("POST", "/v1/completions")
  connection.endheaders()
  response = connection.getresponse()
  result = response.status, json.loads(response.read())
  connection.close()
  return result


@pytest.mark.parametrize("send, status, code", [
    (lambda s: _request(s, "POST", "/v1/completions", b"{not json"), 400, "invalid_json"),
    (lambda s: _post(s, "/completions", dict(model="lm", prompt="a", logprobs=21)), 400, "invalid_value"),
    (lambda s: _post(s, "/completions", dict(model="lm", prompt=[1, 259])), 400, "invalid_value"),
    (lambda s: _post(s, "/completions", dict(model="lm", prompt="a", n="2")), 400, "invalid_type"),
    (lambda s: _post(s, "/completions", dict(model="lm", prompt="a", max_tokens=2000)), 400,
     "context_length_exceeded"),
    (lambda s: _post(s, "/completions", dict(model="lm", prompt="a", stop="\n")), 400, "unsupported_parameter"),
    (lambda s: _post(s, "/completions", dict(model="lm")), 400, "missing_field"),
    (lambda s: _post(s, "/classifications", dict(model="digits", input=[[[0.5]]])), 400, "invalid_shape"),
    (lambda s: _post(s, "/completions", dict(model="digits", prompt="a")), 400, "wrong_endpoint"),
    (lambda s: _post(s, "/completions", dict(model="gpt-5", prompt="a")), 404, "model_not_found"),
    (lambda s: _request(s, "GET", "/v1/nothing"), 404, "unknown_url"),
    (lambda s: _request(s, "GET", "/v1/completions"), 405, "method_not_allowed"),
    (_oversize, 413, "request_too_large"),
    (_no_length, 411, "length_required"),
])
def test_bad_requests_get_json_errors_and_the_server_keeps_serving(server, send, status, code):
  got, payload = send(server)
  assert got == status, payload
  error = payload["error"]
  assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
  assert error["type"] == "invalid_request_error" and error["message"]
  assert _request(server, "GET", "/v1/models")[0] == 200


def _bodies(count: int) -> list:
  """Scoring requests of 3 rows each (the echo test's compiled shapes)."""
  return [dict(prompt=[[1, 10 + i, 20], [1, 5], [1, 6]], max_tokens=0, echo=True, logprobs=5) for i in range(count)]


def test_client_caches_and_respects_the_budget(server, tmp_path):
  cache = str(tmp_path / "cache.sqlite")
  teacher = client_lib.TeacherClient(server.url, "lm", cache_path=cache)
  first = teacher.post("/completions", _bodies(3))
  assert teacher.usage["queries"] == 3 and teacher.usage["tokens"] == 3 * 7
  again = teacher.post("/completions", _bodies(3))
  assert teacher.usage["queries"] == 3 and teacher.usage["cache_hits"] == 3
  assert again == first and again[1]["choices"][0]["logprobs"]["tokens"][1] == "bytes:\\x08"
  teacher.close()

  budget_cache = str(tmp_path / "budget.sqlite")
  limited = client_lib.TeacherClient(server.url, "lm", cache_path=budget_cache, max_queries=3)
  with pytest.raises(client_lib.BudgetExhausted, match=r"3 of the 5 .*rerun with a larger budget: the answered"):
    limited.post("/completions", _bodies(5))
  assert limited.usage["queries"] == 3
  assert len(client_lib._Cache(budget_cache)) == 3  # pylint: disable=protected-access
  limited.close()
  resumed = client_lib.TeacherClient(server.url, "lm", cache_path=budget_cache, max_queries=10)
  responses = resumed.post("/completions", _bodies(5))
  assert resumed.usage["queries"] == 2 and resumed.usage["cache_hits"] == 3 and len(responses) == 5
  assert [r["choices"][0]["logprobs"]["tokens"][1] for r in responses] == [f"bytes:\\x{7 + i:02x}" for i in range(5)]
  with pytest.raises(client_lib.ApiError, match="logprobs") as error:
    resumed.post("/completions", [dict(prompt="a", logprobs=99)])
  assert error.value.status == 400 and resumed.usage["retries"] == 0  # a 400 is not retried


class _Flaky(http.server.BaseHTTPRequestHandler):
  """503 (with Retry-After 0) for the first two requests, then 200."""
  calls = 0

  def do_POST(self):  # pylint: disable=invalid-name
    self.rfile.read(int(self.headers["Content-Length"]))
    type(self).calls += 1
    ok = type(self).calls > 2
    data = json.dumps({"ok": True, "usage": {"total_tokens": 1}} if ok else {"error": {"message": "busy"}}).encode()
    self.send_response(200 if ok else 503)
    if not ok:
      self.send_header("Retry-After", "0")
    self.send_header("Content-Length", str(len(data)))
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, *args):
    pass


def test_client_retries_5xx_and_limits_its_rate(server):
  flaky = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
  thread = threading.Thread(target=flaky.serve_forever, daemon=True)
  thread.start()
  try:
    teacher = client_lib.TeacherClient(f"http://127.0.0.1:{flaky.server_address[1]}/v1", "m", cache_path=None,
                                       backoff_s=0.01)
    assert teacher.post("/anything", [{}]) == [{"ok": True, "usage": {"total_tokens": 1}}]
    assert teacher.usage["retries"] == 2 and teacher.usage["queries"] == 1
  finally:
    flaky.shutdown()
    flaky.server_close()
  paced = client_lib.TeacherClient(server.url, "lm", cache_path=None, requests_per_second=20, concurrency=4)
  start = time.monotonic()
  paced.post("/completions", _bodies(6))
  assert time.monotonic() - start >= 0.25 and paced.usage["queries"] == 6


def test_labelling_stopped_by_the_budget_loses_nothing_already_paid(runs, server, tmp_path):
  """A cache labelled through the API with too small a query budget: a clear error, no partial
  cache; rerun with a larger budget on the same response cache pays only for the missing rows, and
  the cache equals the in-process teacher's top-k."""
  from experiments import label_with_teacher  # pylint: disable=import-outside-toplevel
  from research import config as config_lib  # pylint: disable=import-outside-toplevel
  from research.teachers import access, cache, codec  # pylint: disable=import-outside-toplevel
  import json as json_lib  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  config = config_lib.resolve(json_lib.loads((pathlib.Path(runs["lm"]) / "config.json").read_text()))
  dataset = config_lib.build({"dataset": dict(config.dataset.to_dict(), data_dir=str(tmp_path / "caches"))}).dataset
  responses = str(tmp_path / "responses.sqlite")
  ask = lambda budget: label_with_teacher.teacher_for(api_url=server.url, api_model="lm", tokenizer=tokenizers.ByteTokenizer(),
                                                      cache_path=responses, max_queries=budget)
  with pytest.raises(UserError, match="budget"):
    label_with_teacher.label_cache(ask(4), dataset, "lm_top3", "topk", 3, limit=6)
  assert not cache.exists("lm_top3", dataset.data_dir)
  teacher = ask(10)
  provenance = label_with_teacher.label_cache(teacher, dataset, "lm_top3", "topk", 3, limit=6)
  assert teacher.usage["api_queries"] == 2 and provenance.source == server.url and provenance.examples == 6
  arrays, _, labelling = cache.load("lm_top3", dataset.data_dir)
  assert labelling["api_queries"] == 2
  ids, log_probs = codec.decode_topk(arrays["signal_topk"])
  local_ids, local_log_probs = access.LocalTeacher(runs["lm"]).score({k: arrays[k] for k in
                                                                     ("tokens", "segment_ids", "positions")}, 3)
  trained = arrays["loss_mask"][:, 1:] > 0  # positions whose next token is a target
  np.testing.assert_array_equal(ids[:, :-1][trained], local_ids[:, :-1][trained])
  np.testing.assert_allclose(log_probs[:, :-1][trained], local_log_probs[:, :-1][trained],
                             atol=codec.MAX_ERROR + 1e-5)
