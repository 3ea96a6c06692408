"""Token pipelines for language models: text splits become fixed-length token rows, then Grain batches.

A split is tokenised once per process and turned into rows of L = config.dataset.seq_len tokens,
each row a dict entry of (N, L) arrays (the token conventions every LM module codes against):
  'tokens' int32, 'segment_ids' int32 (0 = padding, 1.. = documents), 'positions' int32 (0 at each
  segment's first token), 'loss_mask' float32 (1 where the token is a target predicted from the
  previous column of the same segment).

Rows come in three kinds, chosen by the split's features and config.dataset.prompt_len (P):
  * corpus ('text'), P == 0: documents BOS + text + EOS, concatenated in split order and cut into
    consecutive rows (the last partial row dropped). Documents inside a row are numbered segments;
    a document cut by a row boundary continues in the next row as a fresh segment at position 0.
  * corpus, P > 0 (prompt/completion windows for char-LM sampling): the same stream cut into rows,
    one segment per row, columns < P the prompt, loss on columns >= P only.
  * task ('prompt', 'completion'): one example per row in the fixed layout: BOS + prompt left-padded
    into columns 0..P-1, completion + EOS right-padded into columns P..L-1, loss on the completion.

Training batches carry 'index' (the row's index in the training set); evaluation batches carry
'mask' (1 real row, 0 padding row). Batching, shuffling and host slicing are pipeline.py's: every
host derives the same global batch order and reads only its slice, so any host count sees the same
global batches, and resume is exact through Grain's iterator state.
"""
import functools

import grain
import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research.data import sources, tokenizers
from research.data import pipeline
from research.errors import UserError

KEYS = ("tokens", "segment_ids", "positions", "loss_mask")
_DTYPES = {"tokens": np.int32, "segment_ids": np.int32, "positions": np.int32, "loss_mask": np.float32}


# ----------------------------------------------------------------------------- reading splits

@functools.lru_cache(maxsize=16)
def _features(name: str, data_dir: str, download: bool) -> tuple:
  data_dir = data_dir or sources.builders.default_data_dir()
  tfds_name = sources.prepare(name, data_dir, download)
  return tuple(tfds.builder(tfds_name, data_dir=data_dir).info.features.keys())


def is_text(dataset_config: ml_collections.ConfigDict) -> bool:
  """True when the dataset's features hold 'text' (a corpus) or 'prompt' (a task)."""
  features = _features(dataset_config.name, dataset_config.data_dir, dataset_config.download)
  return "text" in features or "prompt" in features


def tokenizer(dataset_config: ml_collections.ConfigDict):
  """The tokenizer named by config.dataset.tokenizer ('byte' or a tokenizer.json path)."""
  return _cached_tokenizer(dataset_config.tokenizer)


@functools.lru_cache(maxsize=4)
def _cached_tokenizer(spec: str):
  return tokenizers.build(spec)


def _as_str(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@functools.lru_cache(maxsize=16)
def _records(name: str, split: str, data_dir: str, download: bool) -> dict:
  """The split's text features as lists of str: {'text': [...]} or {'prompt': [...], 'completion': [...]}."""
  source = sources.open_split(name, split, data_dir, download)
  records = source.__getitems__(list(range(len(source)))) if len(source) else []
  keys = [k for k in ("text", "prompt", "completion") if records and k in records[0]]
  if records and not keys:
    raise UserError(f"Dataset '{name}' has no 'text' or 'prompt'/'completion' features "
                    f"(it has {sorted(records[0])}); it is not a text dataset.")
  return {k: [_as_str(r[k]) for r in records] for k in keys}


# ----------------------------------------------------------------------------- row construction

def _validate(seq_len: int, prompt_len: int, overflow: str, task: bool):
  if seq_len < 2:
    raise UserError(f"config.dataset.seq_len={seq_len}: a row needs at least 2 tokens.")
  if prompt_len < 0 or (prompt_len and seq_len <= prompt_len):
    raise UserError(f"config.dataset.prompt_len={prompt_len} must be in [0, seq_len) "
                    f"(seq_len={seq_len}): the completion needs at least one column.")
  if task and prompt_len < 1:
    raise UserError("This dataset has prompt/completion examples: set config.dataset.prompt_len "
                    "to the number of columns for the (left-padded) prompt, e.g. 32.")
  if overflow not in ("error", "truncate"):
    raise UserError(f"config.dataset.overflow={overflow!r}: use 'error' or 'truncate'.")


def _empty(n: int, seq_len: int, pad_id: int) -> dict:
  return {"tokens": np.full((n, seq_len), pad_id, np.int32),
          "segment_ids": np.zeros((n, seq_len), np.int32),
          "positions": np.zeros((n, seq_len), np.int32),
          "loss_mask": np.zeros((n, seq_len), np.float32)}


def pack_documents(docs: list, tok, seq_len: int, prompt_len: int = 0) -> dict:
  """Rows of the stream BOS + doc + EOS, BOS + doc + EOS, ... (see the module docstring).

  `docs` are token arrays (no specials). With prompt_len == 0 every document piece in a row is its
  own segment; with prompt_len > 0 the row is one segment trained on columns >= prompt_len.
  """
  pieces = [np.concatenate([[tok.bos_id], np.asarray(d, np.int32), [tok.eos_id]]).astype(np.int32)
            for d in docs]
  if not pieces:
    return _empty(0, seq_len, tok.pad_id)
  stream = np.concatenate(pieces)
  doc_of = np.repeat(np.arange(len(pieces)), [len(p) for p in pieces])
  n = len(stream) // seq_len
  tokens = stream[:n * seq_len].reshape(n, seq_len)
  columns = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (n, seq_len))
  if prompt_len:
    return {"tokens": tokens, "segment_ids": np.ones((n, seq_len), np.int32),
            "positions": np.array(columns), "loss_mask": (columns >= prompt_len).astype(np.float32)}
  docs_in_row = doc_of[:n * seq_len].reshape(n, seq_len)
  starts = np.ones((n, seq_len), bool)  # a document piece begins here
  starts[:, 1:] = docs_in_row[:, 1:] != docs_in_row[:, :-1]
  first_column = np.maximum.accumulate(np.where(starts, columns, 0), axis=1)
  return {"tokens": tokens,
          "segment_ids": (docs_in_row - docs_in_row[:, :1] + 1).astype(np.int32),
          "positions": (columns - first_column).astype(np.int32),
          "loss_mask": (~starts).astype(np.float32)}


def layout_prompts(prompts: list, completions: list, tok, seq_len: int, prompt_len: int,
                   overflow: str = "error", what: str = "the dataset") -> dict:
  """One row per example: BOS + prompt left-padded into columns [0, P), completion + EOS
  right-padded into [P, L); positions count from the first real prompt token. `prompts` and
  `completions` are token arrays (no specials). overflow='truncate' keeps a prompt's last P tokens
  and a completion's first L - P; 'error' raises a UserError naming the example."""
  _validate(seq_len, prompt_len, overflow, task=True)
  rows = _empty(len(prompts), seq_len, tok.pad_id)
  room = seq_len - prompt_len
  for i, (prompt, completion) in enumerate(zip(prompts, completions)):
    prompt = np.concatenate([[tok.bos_id], np.asarray(prompt, np.int32)])
    completion = np.concatenate([np.asarray(completion, np.int32), [tok.eos_id]])
    if overflow == "error" and (len(prompt) > prompt_len or len(completion) > room):
      raise UserError(
          f"Example {i} of {what} has a prompt of {len(prompt)} tokens (with BOS) and a completion "
          f"of {len(completion)} tokens (with EOS), more than prompt_len={prompt_len} and "
          f"seq_len - prompt_len={room}. Raise config.dataset.prompt_len / seq_len, or set "
          f"config.dataset.overflow='truncate' to cut long examples.")
    prompt, completion = prompt[-prompt_len:], completion[:room]
    start, end = prompt_len - len(prompt), prompt_len + len(completion)
    rows["tokens"][i, start:prompt_len] = prompt
    rows["tokens"][i, prompt_len:end] = completion
    rows["segment_ids"][i, start:end] = 1
    rows["positions"][i, start:end] = np.arange(end - start)
    rows["loss_mask"][i, prompt_len:end] = 1.0
  return rows


@functools.lru_cache(maxsize=8)
def _cached_rows(name: str, split: str, data_dir: str, download: bool, tokenizer_spec: str,
                 seq_len: int, prompt_len: int, overflow: str) -> dict:
  """Tokenising and laying out a split is the slow part, so each process does it once per split."""
  records = _records(name, split, data_dir, download)
  tok = _cached_tokenizer(tokenizer_spec)
  task = "prompt" in records
  _validate(seq_len, prompt_len, overflow, task)
  if task:
    rows = layout_prompts(tok.encode_many(records["prompt"]), tok.encode_many(records["completion"]),
                          tok, seq_len, prompt_len, overflow, what=f"{name} split '{split}'")
  else:
    rows = pack_documents(tok.encode_many(records.get("text", [])), tok, seq_len, prompt_len)
  rows = {k: np.ascontiguousarray(rows[k], _DTYPES[k]) for k in KEYS}
  for array in rows.values():
    array.setflags(write=False)  # shared by every caller in the process
  return rows


def rows(dataset_config: ml_collections.ConfigDict, split: str) -> dict:
  """The whole split as (N, L) arrays {'tokens', 'segment_ids', 'positions', 'loss_mask'} (read-only)."""
  c = dataset_config
  return _cached_rows(c.name, split, c.data_dir, c.download, c.tokenizer, int(c.seq_len),
                      int(c.prompt_len), c.overflow)


def prompts(dataset_config: ml_collections.ConfigDict, split: str) -> list:
  """[(prompt, completion)] strings of a prompt/completion dataset's split, in row order."""
  c = dataset_config
  records = _records(c.name, split, c.data_dir, c.download)
  if "prompt" not in records:
    raise UserError(f"Dataset '{c.name}' has no 'prompt'/'completion' features (it is a text "
                    "corpus); prompts() needs a task dataset.")
  return list(zip(records["prompt"], records["completion"]))


# ----------------------------------------------------------------------------- batches

def _take(data: dict, indices: np.ndarray) -> dict:
  return {k: data[k][indices] for k in KEYS}


def train_dataset(config: ml_collections.ConfigDict, batch_size: int, seed: int) -> grain.MapDataset:
  """An infinite, shuffled (differently each epoch) MapDataset of this host's training batches.

  `batch_size` is the global batch; each host gets its batch_size / process_count rows of it.
  Batch k is a pure function of (seed, k), which is what makes resume exact.
  """
  data = rows(config.dataset, config.dataset.train_split)
  return pipeline.array_dataset(data, batch_size, seed, what=f"The training split ({config.dataset.seq_len}-token rows)")


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  """Rows in the training split (all hosts together)."""
  return len(rows(config.dataset, config.dataset.train_split)["tokens"])


def eval_batches(dataset_config: ml_collections.ConfigDict, split: str, batch_size: int):
  """Yields this host's rows of `split` in order, in batches padded to `batch_size` with mask 0
  (padding rows: PAD tokens, segment 0, loss_mask 0)."""
  data = rows(dataset_config, split)
  indices = np.arange(jax.process_index(), len(data["tokens"]), jax.process_count())
  local_batch = batch_size // jax.process_count()
  pad_id = tokenizer(dataset_config).pad_id
  for start in range(0, len(indices), local_batch):
    chunk = indices[start:start + local_batch]
    batch = _take(data, chunk)
    pad = local_batch - len(chunk)
    if pad:
      filler = _empty(pad, data["tokens"].shape[1], pad_id)
      batch = {k: np.concatenate([batch[k], filler[k]]) for k in KEYS}
    batch["mask"] = np.concatenate([np.ones(len(chunk), np.float32), np.zeros(pad, np.float32)])
    yield batch


def example_shape(dataset_config: ml_collections.ConfigDict) -> tuple:
  """(seq_len,): the shape of one row."""
  return (int(dataset_config.seq_len),)
