"""Token ids ↔ the token strings and bytes an OpenAI-style API shows in its log-probs.

An API names tokens by strings (`tokens`, the keys of `top_logprobs`), so a client that wants ids
back needs an exact inverse over the whole vocabulary:
  * ByteTokenizer: "<pad>", "<bos>", "<eos>" for the specials; a byte b is chr(b) when it is
    printable ASCII (32 ≤ b < 127), else "bytes:\\xHH" (OpenAI's spelling of a token that is not
    valid UTF-8 on its own, e.g. "bytes:\\xe2").
  * JsonTokenizer: the `tokenizers` library's id_to_token / token_to_id.
  * ids a model has beyond its tokenizer's vocabulary (config.model.vocab_size padding):
    "<unused_N>".
token_bytes gives the `bytes` field of the chat API: the bytes the token stands for (exact for byte
tokens and byte-level BPE, where a token may hold part of a character; else its decoded text).
"""
import re

from research.data import tokenizers
from research.errors import UserError

_BYTE_SPECIALS = ("<pad>", "<bos>", "<eos>")
_UNUSED = re.compile(r"<unused_(\d+)>")
_HEX = re.compile(r"bytes:\\x([0-9a-f]{2})")


def _byte_level_table() -> dict:
  """GPT-2's byte-level alphabet inverted: the printable character that stands for each byte → byte."""
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  others = [b for b in range(256) if b not in printable]
  return {**{chr(b): b for b in printable}, **{chr(256 + i): b for i, b in enumerate(others)}}


_BYTE_LEVEL = _byte_level_table()


def _is_bytes(tok) -> bool:
  return isinstance(tok, tokenizers.ByteTokenizer)


def _json(tok):
  return tok._tokenizer  # pylint: disable=protected-access  # JsonTokenizer's `tokenizers` object


def token_string(tok, token: int) -> str:
  """The API's string for token id `token` (see the module docstring)."""
  token = int(token)
  if token < 0:
    raise UserError(f"Token id {token} is negative; token ids are ≥ 0.")
  if token >= tok.vocab_size:
    return f"<unused_{token}>"
  if _is_bytes(tok):
    if token < tok.offset:
      return _BYTE_SPECIALS[token]
    byte = token - tok.offset
    return chr(byte) if 32 <= byte < 127 else "bytes:\\x%02x" % byte
  return _json(tok).id_to_token(token)


def token_id(tok, string: str) -> int:
  """The inverse of token_string; UserError for a string that names no token."""
  unused = _UNUSED.fullmatch(string)
  if unused and int(unused.group(1)) >= tok.vocab_size:
    return int(unused.group(1))
  if _is_bytes(tok):
    if string in _BYTE_SPECIALS:
      return _BYTE_SPECIALS.index(string)
    if len(string) == 1 and 32 <= ord(string) < 127:
      return ord(string) + tok.offset
    hexed = _HEX.fullmatch(string)
    if hexed and not 32 <= int(hexed.group(1), 16) < 127:
      return int(hexed.group(1), 16) + tok.offset
  else:
    found = _json(tok).token_to_id(string)
    if found is not None:
      return int(found)
  raise UserError(f"{string!r} is not a token of {tok!r}. Pass a string exactly as the server wrote it "
                  "in `tokens` / `top_logprobs` (or request top_logprobs_ids=true to get ids directly).")


def token_bytes(tok, token: int) -> list:
  """The UTF-8 bytes token `token` stands for (the chat API's `bytes`): the byte itself for a byte
  token, the decoded text of a `tokenizers` token, the string's bytes for specials."""
  token = int(token)
  if token >= tok.vocab_size:
    return list(token_string(tok, token).encode("utf-8"))
  if _is_bytes(tok):
    return [token - tok.offset] if token >= tok.offset else list(_BYTE_SPECIALS[token].encode("utf-8"))
  string = token_string(tok, token)
  if token in (tok.pad_id, tok.bos_id, tok.eos_id):
    return list(string.encode("utf-8"))
  if type(_json(tok).decoder).__name__ == "ByteLevel" and all(c in _BYTE_LEVEL for c in string):
    return [_BYTE_LEVEL[c] for c in string]  # byte-level BPE (GPT-2 style): exact, even for part of a character
  return list(_json(tok).decode([token], skip_special_tokens=False).encode("utf-8"))
