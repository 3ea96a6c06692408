"""Tokenizers for the language-model side: raw UTF-8 bytes, or a `tokenizers` tokenizer.json file.

Both expose the same small interface, which every LM module codes against (never literal ids):
  .vocab_size, .pad_id, .bos_id, .eos_id,
  encode(text) -> list[int]    (no special tokens added),
  decode(ids) -> str           (special tokens dropped),
  encode_many(texts) -> list[np.ndarray int32]   (the same as encode, fast, for whole corpora).

`build("byte")` gives the byte tokenizer (PAD 0, BOS 1, EOS 2, byte b -> b + 3, 259 ids), which needs
no file and no training, so every corpus works with it offline; `build(path)` loads a tokenizer.json.
"""
import os

import numpy as np

from research.errors import UserError

# Spellings of the special tokens in common tokenizer.json files, in order of preference.
PAD_TOKENS = ("<pad>", "[PAD]", "<|pad|>", "<PAD>", "<|padding|>")
BOS_TOKENS = ("<s>", "<bos>", "[BOS]", "<|bos|>", "<BOS>", "<|startoftext|>", "<|begin_of_text|>")
EOS_TOKENS = ("</s>", "<eos>", "[EOS]", "<|eos|>", "<EOS>", "<|endoftext|>", "<|end_of_text|>")


class ByteTokenizer:
  """UTF-8 bytes as tokens: id = byte + 3 after PAD 0, BOS 1, EOS 2."""
  pad_id, bos_id, eos_id = 0, 1, 2
  offset = 3
  vocab_size = 256 + offset

  def encode(self, text: str) -> list:
    return [b + self.offset for b in text.encode("utf-8")]

  def encode_many(self, texts) -> list:
    return [np.frombuffer(t.encode("utf-8"), np.uint8).astype(np.int32) + self.offset for t in texts]

  def decode(self, ids) -> str:
    """Drops the special ids; bytes that are not valid UTF-8 become U+FFFD (e.g. a cut-off sample)."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    ids = ids[(ids >= self.offset) & (ids < self.vocab_size)]
    return (ids - self.offset).astype(np.uint8).tobytes().decode("utf-8", errors="replace")

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def _find(vocab: dict, names) -> int | None:
  for name in names:
    if name in vocab:
      return vocab[name]
  return None


class JsonTokenizer:
  """A Hugging Face `tokenizers` tokenizer.json; the special ids are looked up in its vocabulary.

  EOS is required (it ends documents and completions). A missing BOS or PAD falls back to the EOS
  id, as GPT-2-style vocabularies do: padding is never attended to (segment 0) nor trained on.
  """

  def __init__(self, path: str):
    import tokenizers  # pylint: disable=import-outside-toplevel
    self.path = path
    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"Cannot read tokenizer file {path}: {e}. config.dataset.tokenizer must be "
                      "'byte' or the path of a `tokenizers` tokenizer.json file.") from e
    vocab = self._tokenizer.get_vocab(with_added_tokens=True)
    self.eos_id = _find(vocab, EOS_TOKENS)
    if self.eos_id is None:
      raise UserError(
          f"Tokenizer {path} has no end-of-sequence token. It needs one of {', '.join(EOS_TOKENS)} "
          f"(and ideally a BOS token, one of {', '.join(BOS_TOKENS)}, and a PAD token, one of "
          f"{', '.join(PAD_TOKENS)}); add them as special tokens when training the tokenizer.")
    bos, pad = _find(vocab, BOS_TOKENS), _find(vocab, PAD_TOKENS)
    self.bos_id = self.eos_id if bos is None else bos
    self.pad_id = self.eos_id if pad is None else pad
    self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
    self._specials = {self.pad_id, self.bos_id, self.eos_id}

  def encode(self, text: str) -> list:
    return list(self._tokenizer.encode(text, add_special_tokens=False).ids)

  def encode_many(self, texts) -> list:
    encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
    return [np.asarray(e.ids, np.int32) for e in encodings]

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids).reshape(-1) if int(i) not in self._specials]
    return self._tokenizer.decode(ids, skip_special_tokens=True)

  def __repr__(self) -> str:
    return f"JsonTokenizer({self.path!r})"


def build(spec: str):
  """'byte' -> ByteTokenizer(); anything else is the path of a tokenizer.json file."""
  if spec == "byte":
    return ByteTokenizer()
  path = os.path.expanduser(spec)
  if not os.path.isfile(path):
    raise UserError(f"Tokenizer file {path} does not exist. config.dataset.tokenizer must be 'byte' "
                    "(UTF-8 bytes, no file needed) or the path of a `tokenizers` tokenizer.json file.")
  return JsonTokenizer(path)
