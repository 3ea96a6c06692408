"""The teacher cache: a teacher's signal over a dataset, written once, trained from many times.

experiments/label_with_teacher.py runs a teacher (in process, or through its OpenAI-compatible API)
over a dataset and writes what the chosen access level reveals (research/teachers/signal.py) as a
TFDS array_record dataset with one split, 'train':
  text   rows in research/data/text.py's layout ('tokens', 'segment_ids', 'positions', 'loss_mask',
         'index' = the source row) plus the signal fields;
  images 'image' uint8 (H, W, C) — the exact view the teacher saw —, 'label', 'index' (the source
         example) and 'view' (its augmentation seed: view 0 is the clean image), plus the signal.
The DatasetInfo metadata holds the Provenance and the labelling ledger (teacher FLOPs, API
queries and tokens, seconds). A student trains from it with config.teacher.cache = its name and no
teacher in memory; its data iterator's position is saved in its checkpoints like any dataset's.
TFDS writes into a temporary folder and renames it when complete, so a failed labelling run
leaves no partial cache.
"""
import functools

import numpy as np
import tensorflow_datasets as tfds

from research.data import builders, sources
from research.errors import UserError
from research.teachers.signal import Provenance


def _builder_class(name: str, arrays: dict, metadata: dict):

  # Unregistered: a process may write several caches (and one name in several data dirs); readers
  # find a cache by its files.
  class TeacherCache(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = {k: tfds.features.Tensor(shape=v.shape[1:], dtype=v.dtype) for k, v in arrays.items()}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                   metadata=tfds.core.MetadataDict(metadata), disable_shuffling=True,
                                   description="A teacher's signal over a dataset (research/teachers/cache.py).")

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      n = len(next(iter(arrays.values())))
      for i in range(n):
        yield i, {k: v[i] for k, v in arrays.items()}

  with tfds.core.registered.skip_registration():
    return type(f"TeacherCache_{name}", (TeacherCache,), {"name": name})


def exists(name: str, data_dir: str = "") -> bool:
  """Whether a dataset (a cache, or anything else) named `name` is prepared in `data_dir`."""
  return sources.is_prepared(name, data_dir)


def write(name: str, arrays: dict, provenance: Provenance, ledger: dict, data_dir: str = "") -> str:
  """Writes cache `name` (refusing to replace one); returns its folder."""
  data_dir = data_dir or builders.default_data_dir()
  if exists(name, data_dir):
    raise UserError(f"A dataset named '{name}' already exists in {data_dir}; pick another name or delete it.")
  lengths = {k: len(v) for k, v in arrays.items()}
  if len(set(lengths.values())) != 1:
    raise ValueError(f"Cache fields have different lengths: {lengths}.")
  arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
  builder = _builder_class(name, arrays, {"provenance": provenance.to_json(), "ledger": ledger})(
      data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)


@functools.lru_cache(maxsize=8)
def _load(name: str, data_dir: str):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
    prepared = builder.is_prepared()
  except Exception:  # pylint: disable=broad-except
    prepared = False
  if not prepared:
    raise UserError(f"No teacher cache named '{name}' in {data_dir}. Write one with `python -m "
                    f"experiments.label_with_teacher --teacher=WORKDIR --level=topk --output={name}` (or point "
                    "config.dataset.data_dir at the folder that holds it).")
  metadata = builder.info.metadata or {}
  if "provenance" not in metadata:
    raise UserError(f"Dataset '{name}' in {data_dir} is not a teacher cache (no provenance in its "
                    "metadata); write caches with experiments/label_with_teacher.py.")
  source = builder.as_data_source("train")
  records = source.__getitems__(list(range(len(source))))
  arrays = {k: np.stack([r[k] for r in records]) for k in records[0]}
  for array in arrays.values():
    array.setflags(write=False)  # shared by every caller in the process
  return arrays, Provenance.from_json(dict(metadata["provenance"])), dict(metadata.get("ledger", {}))


def load(name: str, data_dir: str = ""):
  """(arrays {field: (N, ...)}, Provenance, labelling ledger) of cache `name`, read-only."""
  return _load(name, data_dir or builders.default_data_dir())


def layout(dataset_config) -> dict:
  """What a cache's rows depend on in a dataset config (Provenance.dataset; signal.check compares
  it with the student's): the dataset's name and, for text, the tokenizer (spec and digest) and
  the row shape; for images the image shape."""
  from research.data import pipeline, text  # pylint: disable=import-outside-toplevel
  from research.teachers import signal  # pylint: disable=import-outside-toplevel
  if text.is_text(dataset_config):
    tok = text.tokenizer(dataset_config)
    return {"name": dataset_config.name, "tokenizer": dataset_config.tokenizer,
            "tokenizer_digest": signal.tokenizer_digest(tok), "seq_len": int(dataset_config.seq_len),
            "prompt_len": int(dataset_config.prompt_len)}
  return {"name": dataset_config.name, "shape": list(pipeline.example_shape(dataset_config))}
