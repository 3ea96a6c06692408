"""One teacher-signal type across access levels, with the provenance every cache carries.

A student can see its teacher at four levels of access, from most to least informative:

  level    what the student gets (per predicted token, or per image)        its loss (config.method.name)
  logits   the full distribution: log-probs over the whole vocabulary        token_kd / hinton_kd (dense KD)
  topk     the k most likely (token, log-prob) pairs — an API's top_logprobs topk_kd (KL with a tail bucket)
  sample   a token the teacher sampled, with its log-prob                    sampled_kd (KL on {token, rest})
  text     the teacher's tokens only: sampled text, or an image's top-1 label supervised (sequence-level KD)

In a batch (and in a teacher cache, research/teachers/cache.py) the signal travels as fields:
  signal_log_probs  float16 (..., V)  level logits
  signal_topk       uint32  (..., k)  level topk, research/teachers/codec.py's 4-byte entries
  signal_log_prob   float32 (...)     level sample: the teacher's log-prob of the token it wrote
For a language model position t carries the teacher's view of token t + 1 (the target the
student's logits at t predict); for an image classifier the one prediction. At the sample and
text levels the tokens (or the images' 'label') are the teacher's own.

`Provenance` says who produced a signal and how, so a student never silently trains on a cache
written by another teacher, tokenizer or dataset layout (`check`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib

from research.errors import UserError

LEVELS = ("logits", "topk", "sample", "text")
FIELDS = {"logits": ("signal_log_probs",), "topk": ("signal_topk",), "sample": ("signal_log_prob",),
          "text": ()}
SIGNAL_KEYS = tuple(key for keys in FIELDS.values() for key in keys)
# The methods that consume each level (language model, image classifier).
METHODS = {"logits": ("token_kd", "hinton_kd", "dkd"), "topk": ("topk_kd",), "sample": ("sampled_kd",),
           "text": ("supervised",)}


@dataclasses.dataclass(frozen=True)
class Provenance:
  """Who wrote a teacher signal, from what, and how."""
  level: str
  teacher: str                  # the teacher's name: its run workdir, or the API's model id
  digest: str                   # checkpoint_digest of the teacher's weights ('' when unknown: a remote API)
  source: str                   # 'in-process' or the API's base URL
  dataset: dict                 # the layout the rows come from: name, split, and for text
                                # tokenizer, tokenizer_digest, seq_len, prompt_len; for images shape
  top_k: int = 0                # level topk
  temperature: float = 1.0      # the teacher distribution's temperature (the API's)
  sampling: dict = dataclasses.field(default_factory=dict)  # sample/text: top_p, seed, …
  examples: int = 0             # rows (or image views) labelled = queries at one row per query

  def __post_init__(self):
    if self.level not in LEVELS:
      raise UserError(f"Teacher signal level {self.level!r} is not one of {', '.join(LEVELS)}.")
    if (self.level == "topk") != (self.top_k > 0):
      raise UserError(f"Level {self.level!r} with top_k={self.top_k}: top_k > 0 goes with level 'topk' only.")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> "Provenance":
    return cls(**data)


def checkpoint_digest(workdir: str) -> str:
  """sha256 over the relative paths and bytes of the latest checkpoint's files of a run (its
  weights as saved), so two caches can be told apart by the exact teacher that wrote them."""
  root = pathlib.Path(workdir).expanduser()
  root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
  steps = sorted((p for p in root.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name)) \
      if root.is_dir() else []
  if not steps:
    raise UserError(f"No checkpoint under {root}: point at the workdir of a finished teacher run.")
  sha = hashlib.sha256()
  for path in sorted(p for p in steps[-1].rglob("*") if p.is_file()):
    rel = path.relative_to(steps[-1]).as_posix()
    if "_CHECKPOINT_METADATA" in rel:  # holds the save time, not the weights
      continue
    sha.update(rel.encode() + b"\0" + path.read_bytes())
  return sha.hexdigest()[:16]


def tokenizer_digest(tok) -> str:
  """A short hash of how a tokenizer maps ids: its vocabulary (a tokenizer.json's id → token table,
  or the byte tokenizer's fixed layout) and its special ids. Equal iff they tokenise alike."""
  table = tok._tokenizer.get_vocab(with_added_tokens=True) if hasattr(tok, "_tokenizer") else repr(tok)  # pylint: disable=protected-access
  payload = [tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id, sorted(table.items()) if isinstance(table, dict) else table]
  return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]


def level_of_method(name: str) -> str:
  """The signal level a method consumes."""
  for level, names in METHODS.items():
    if name in names:
      return level
  raise UserError(f"method '{name}' needs a teacher model in memory (its features, or its logits on "
                  "augmented/sampled inputs), not a teacher cache; train it with config.teacher.checkpoint.")


def check(provenance: Provenance, method_name: str, method_temperature: float, dataset: dict,
          teacher_digest: str = "") -> None:
  """Raises UserError unless a cache of `provenance` can train `method_name` on the run's dataset
  layout `dataset` (same keys as Provenance.dataset) — and, when the run names its teacher's
  checkpoint, unless that teacher wrote it."""
  where = f"The teacher cache (written by {provenance.teacher}, level {provenance.level})"
  wanted = level_of_method(method_name)
  if wanted != provenance.level and not (wanted == "text" and provenance.level == "sample"):
    raise UserError(f"{where} holds level-{provenance.level} signals but method '{method_name}' needs level "
                    f"'{wanted}'; use method {' or '.join(METHODS[provenance.level])} with this cache, or "
                    f"label a level-{wanted} cache (experiments/label_with_teacher.py --level={wanted}).")
  if provenance.level == "logits" and provenance.temperature != 1.0:
    raise UserError(f"{where} holds log-probs at temperature {provenance.temperature}; the trainer reads "
                    "full log-probs as temperature-1 logits. Relabel at temperature 1 and set "
                    "config.method.temperature instead.")
  if provenance.level in ("topk", "sample") and abs(method_temperature - provenance.temperature) > 1e-6:
    raise UserError(f"{where} holds log-probs at temperature {provenance.temperature}; a top-k/sampled KL "
                    "cannot re-temper them (the hidden tail is unknown). Set config.method.temperature="
                    f"{provenance.temperature}.")
  for key, value in dataset.items():
    if key in provenance.dataset and provenance.dataset[key] != value and key != "split":
      raise UserError(f"{where} was labelled on {key}={provenance.dataset[key]!r} but this run's dataset has "
                      f"{key}={value!r} (provenance mismatch): use the dataset settings the cache was written "
                      "with, or label a new cache for these.")
  if teacher_digest and provenance.digest != teacher_digest:
    raise UserError(f"{where} has teacher digest {provenance.digest or '(unknown, remote API)'} but "
                    f"config.teacher.checkpoint's weights have digest {teacher_digest} (provenance "
                    "mismatch): it was written by a different teacher. Relabel with this teacher or "
                    "point config.teacher.checkpoint at the one that wrote it.")
