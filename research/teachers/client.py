"""A client for OpenAI-compatible teacher APIs that a labelling run can crash, stop and rerun.

`TeacherClient(base_url, model, cache_path=...)`.post(endpoint, bodies) sends the bodies (adding
"model") from `concurrency` threads and returns the responses in order. Stdlib only.

  * Cache: every 200 response is stored in sqlite (WAL mode, one commit per response) under
    sha256 of the canonical JSON of {endpoint, model, body}; a cached response is returned without
    a query and costs no budget, so a rerun after a crash or a spent budget re-pays for nothing.
  * Budget: `max_queries` (requests answered 200) and `max_tokens` (their usage.total_tokens, or
    usage.images for classifications). Each request reserves a query before it is sent; once the
    budget is spent no new request goes out, every answer already received is stored, and .post
    raises BudgetExhausted.
  * Retries: connection errors, timeouts, 429 and 5xx are retried up to `retries` times after
    backoff_s · 2^attempt seconds (+ up to 10 % jitter, or the server's Retry-After); any other 4xx
    raises ApiError at once with the server's message.
  * Rate limit: at most `requests_per_second` requests start per second across threads (starts
    are spaced 1 / requests_per_second apart: a token bucket of one token).
  * `.usage`: {queries, tokens, cache_hits, retries, seconds} — what the compute ledger records.
"""
import concurrent.futures
import hashlib
import json
import random
import sqlite3
import threading
import time
import urllib.error
import urllib.request

from research.errors import UserError

_RETRIED = (429, 500, 502, 503, 504)


class ApiError(UserError):
  """The API refused a request (a 4xx other than 429, or retries ran out)."""

  def __init__(self, message: str, status: int | None = None):
    super().__init__(message)
    self.status = status


class BudgetExhausted(UserError):
  """The query or token budget is spent; the answered requests are cached."""


def cache_key(endpoint: str, model: str, body: dict) -> str:
  """sha256 of the canonical JSON of the request (sorted keys, no spaces)."""
  canonical = json.dumps({"endpoint": endpoint, "model": model, "body": body}, sort_keys=True,
                         separators=(",", ":"), ensure_ascii=False)
  return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class _Cache:
  """key → JSON response, in one sqlite file shared by threads (one connection, one lock)."""

  def __init__(self, path: str):
    self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    self._lock = threading.Lock()
    with self._lock:
      self._db.execute("PRAGMA journal_mode=WAL")
      self._db.execute("CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, response TEXT NOT NULL)")

  def get(self, key: str):
    with self._lock:
      row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
    return None if row is None else json.loads(row[0])

  def put(self, key: str, response: dict):
    with self._lock:  # autocommit: one transaction (commit) per stored response
      self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?)", (key, json.dumps(response)))

  def __len__(self) -> int:
    with self._lock:
      return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

  def close(self):
    with self._lock:
      self._db.close()


class _RateLimiter:
  """Starts spaced at least 1 / rate seconds apart across threads (a token bucket of one token)."""

  def __init__(self, rate: float | None):
    self.rate = rate
    self._next = time.monotonic()
    self._lock = threading.Lock()

  def acquire(self):
    if not self.rate:
      return
    with self._lock:
      now = time.monotonic()
      start = max(now, self._next)
      self._next = start + 1.0 / self.rate
    if start > now:
      time.sleep(start - now)


class TeacherClient:
  """See the module docstring. `base_url` ends in /v1 (e.g. TeacherServer.url)."""

  def __init__(self, base_url: str, model: str, *, cache_path: str | None, max_queries: int | None = None,
               max_tokens: int | None = None, requests_per_second: float | None = None, concurrency: int = 4,
               retries: int = 5, backoff_s: float = 0.5, timeout_s: float = 60):
    if concurrency < 1:
      raise UserError(f"concurrency={concurrency} must be ≥ 1.")
    if requests_per_second is not None and requests_per_second <= 0:
      raise UserError(f"requests_per_second={requests_per_second} must be > 0 (or None: no limit).")
    self.base_url, self.model = base_url.rstrip("/"), model
    self.max_queries, self.max_tokens = max_queries, max_tokens
    self.concurrency, self.retries, self.backoff_s, self.timeout_s = concurrency, retries, backoff_s, timeout_s
    self._cache = _Cache(cache_path) if cache_path else None
    self._limiter = _RateLimiter(requests_per_second)
    self._lock = threading.Lock()
    self._reserved = 0  # queries sent or being sent
    self._usage = {"queries": 0, "tokens": 0, "cache_hits": 0, "retries": 0, "seconds": 0.0}

  @property
  def usage(self) -> dict:
    with self._lock:
      return dict(self._usage)

  def close(self):
    if self._cache is not None:
      self._cache.close()

  def post(self, endpoint: str, bodies: list) -> list:
    """The responses to `bodies` sent to base_url + endpoint, in order (see the module docstring)."""
    endpoint = "/" + endpoint.lstrip("/")
    start = time.monotonic()
    results = [None] * len(bodies)
    stop = threading.Event()

    def one(index: int):
      body = {**bodies[index], "model": self.model}
      key = cache_key(endpoint, self.model, body)
      cached = self._cache.get(key) if self._cache is not None else None
      if cached is not None:
        with self._lock:
          self._usage["cache_hits"] += 1
        results[index] = cached
        return
      if stop.is_set() or not self._reserve():
        stop.set()
        return
      try:
        response = self._send(endpoint, body)
      except BaseException:
        with self._lock:
          self._reserved -= 1
        raise
      usage = response.get("usage") or {}
      with self._lock:
        self._usage["queries"] += 1
        self._usage["tokens"] += int(usage.get("total_tokens", usage.get("images", 0)) or 0)
      if self._cache is not None:
        self._cache.put(key, response)
      results[index] = response

    try:
      with concurrent.futures.ThreadPoolExecutor(self.concurrency) as pool:
        futures = [pool.submit(one, i) for i in range(len(bodies))]
        error = None
        for future in futures:
          try:
            future.result()
          except Exception as e:  # pylint: disable=broad-except  # first error wins, after the rest finish
            stop.set()
            error = error or e
        if error is not None:
          raise error
    finally:
      with self._lock:
        self._usage["seconds"] += time.monotonic() - start
    missing = sum(r is None for r in results)
    if missing:
      kept = "." if self._cache is not None else " (but this client has no cache_path: set one to keep them)."
      raise BudgetExhausted(
          f"The API budget is spent ({self._budget()}): {len(bodies) - missing} of the {len(bodies)} requests of "
          f"this batch were answered, {missing} were not sent; rerun with a larger budget: the answered ones are "
          "cached" + kept)
    return results

  def _budget(self) -> str:
    parts = []
    if self.max_queries is not None:
      parts.append(f"{self._usage['queries']} of max_queries={self.max_queries} queries")
    if self.max_tokens is not None:
      parts.append(f"{self._usage['tokens']} of max_tokens={self.max_tokens} tokens")
    return ", ".join(parts)

  def _reserve(self) -> bool:
    """Takes a query slot if the budget allows one more request."""
    with self._lock:
      if self.max_queries is not None and self._reserved >= self.max_queries:
        return False
      if self.max_tokens is not None and self._usage["tokens"] >= self.max_tokens:
        return False
      self._reserved += 1
      return True

  def _send(self, endpoint: str, body: dict) -> dict:
    """One request with retries; returns the parsed 200 response."""
    data = json.dumps(body).encode("utf-8")
    url = self.base_url + endpoint
    for attempt in range(self.retries + 1):
      self._limiter.acquire()
      request = urllib.request.Request(url, data=data, method="POST",
                                       headers={"Content-Type": "application/json"})
      retry_after = None
      try:
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
          return json.loads(response.read())
      except urllib.error.HTTPError as e:
        message = _error_message(e)
        if e.code not in _RETRIED:
          raise ApiError(f"{url} answered {e.code}: {message}", e.code) from None
        retry_after, failure = e.headers.get("Retry-After"), (e.code, f"{e.code}: {message}")
      except (urllib.error.URLError, OSError, ValueError) as e:  # connection, timeout, truncated/invalid JSON
        failure = (None, f"{type(e).__name__}: {getattr(e, 'reason', e)}")
      if attempt == self.retries:
        raise ApiError(f"{url} failed after {self.retries + 1} attempts; last error {failure[1]}. Check that the "
                       "server is up, or raise retries / backoff_s.", failure[0])
      with self._lock:
        self._usage["retries"] += 1
      time.sleep(_delay(retry_after, self.backoff_s * 2 ** attempt))
    raise AssertionError("unreachable")


def _delay(retry_after, backoff: float) -> float:
  """Seconds to wait: the server's Retry-After (seconds) if it gave one, else backoff + ≤ 10 % jitter."""
  try:
    if retry_after is not None:
      return max(0.0, float(retry_after))
  except ValueError:
    pass  # an HTTP date: fall back to our own backoff
  return backoff * (1 + 0.1 * random.random())


def _error_message(error: urllib.error.HTTPError) -> str:
  """The OpenAI-style error message of an HTTP error answer, else its raw text."""
  try:
    raw = error.read().decode("utf-8", "replace")
  except OSError:
    return error.reason or ""
  try:
    return json.loads(raw)["error"]["message"]
  except (ValueError, KeyError, TypeError):
    return raw[:500] or str(error.reason)
