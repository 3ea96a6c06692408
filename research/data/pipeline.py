"""Grain input pipelines: a checkpointable training iterator and padded evaluation batches.

Batches are dicts of numpy arrays: 'image' float32 (B, H, W, C) in [0, 1], 'label' int32 (B,),
for training 'index' int32 (B,) (the example's position in the training set, 0…N−1, which
CRD's memory banks use) and, with augmentation and a 'clean' teacher view, 'teacher_image' (the
un-augmented images); for evaluation 'mask' float32 (B,) marking real (1) vs padding (0) examples.
Training batches are the same global batches whatever the number of hosts: every host derives the
global order from the seed and reads only its own contiguous slice of each batch, so a run on
N hosts sees exactly the data a single host would. Evaluation splits the examples round-robin.
"""
import functools
import threading

import grain
import jax
import ml_collections
import numpy as np

from research.data import sources
from research.errors import UserError


def _source(config: ml_collections.ConfigDict, split: str):
  return _cached_source(config.name, split, config.data_dir, config.download, config.in_memory)


@functools.lru_cache(maxsize=8)
def _cached_source(name: str, split: str, data_dir: str, download: bool, in_memory: bool):
  """Decoding a split is the slow part of reading it, so each process does it once per split."""
  source = sources.open_split(name, split, data_dir, download)
  return sources.ArraySource.from_tfds(source) if in_memory else source


def _kept_indices(source, exclude_labels) -> np.ndarray:
  labels = (source.labels if isinstance(source, sources.ArraySource)
            else np.asarray([source[i]["label"] for i in range(len(source))]))
  return np.flatnonzero(~np.isin(labels, np.asarray(exclude_labels, np.int64)))


def translate(images: np.ndarray, max_px: int, rng: np.random.Generator) -> np.ndarray:
  """Shifts each image by an integer offset in [−max_px, max_px]² (zero fill), as Hinton et al. 2015."""
  if max_px == 0:
    return images
  return shift(images, max_px, random_offsets(rng, max_px, len(images)))


def random_offsets(rng: np.random.Generator, max_px: int, n: int) -> np.ndarray:
  """(dy, dx) offsets into the padded images, uniform in [0, 2·max_px]: shape (2, n)."""
  return rng.integers(0, 2 * max_px + 1, size=(2, n))


def shift(images: np.ndarray, max_px: int, offsets: np.ndarray) -> np.ndarray:
  """Crops image i at rows dy[i]:dy[i]+H, cols dx[i]:dx[i]+W of its zero-padded copy; offsets = (dy, dx)."""
  h, w = images.shape[1:3]
  padded = np.pad(images, ((0, 0), (max_px, max_px), (max_px, max_px), (0, 0)))
  dy, dx = offsets
  return np.stack([padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(len(images))])


class ShuffledBatches:
  """Batch k = example indices of step k: epoch k // steps_per_epoch, reshuffled every epoch.

  Shuffling whole epochs with numpy and slicing batches keeps Grain's per-element overhead
  (~0.1 ms an element) out of the step; the order is a pure function of (seed, k).
  Each epoch drops its last `len(indices) % batch_size` (shuffled) examples.
  """

  def __init__(self, indices: np.ndarray, batch_size: int, seed: int, epochs: int = 10**6):
    self.indices, self.batch_size, self.seed = indices, batch_size, seed
    self.steps_per_epoch = len(indices) // batch_size
    self.epochs = epochs
    self._orders = {}  # epoch -> permutation; at most two epochs kept (prefetch straddles one)
    self._lock = threading.Lock()

  def __len__(self) -> int:
    return self.steps_per_epoch * self.epochs

  def _order(self, epoch: int) -> np.ndarray:
    with self._lock:
      if epoch not in self._orders:
        order = np.random.default_rng([self.seed, epoch]).permutation(self.indices)
        self._orders = {e: o for e, o in self._orders.items() if e == epoch - 1}
        self._orders[epoch] = order
      return self._orders[epoch]

  def __getitem__(self, step: int) -> np.ndarray:
    epoch, position = divmod(int(step), self.steps_per_epoch)
    start = position * self.batch_size
    return self._order(epoch)[start:start + self.batch_size]


def _gather(source, indices: np.ndarray) -> dict:
  if isinstance(source, sources.ArraySource):
    return {"image": source.images[indices], "label": source.labels[indices]}
  records = source.__getitems__([int(i) for i in indices])
  return {k: np.stack([r[k] for r in records]) for k in ("image", "label")}


def _to_float(batch: dict) -> dict:
  return {"image": batch["image"].astype(np.float32) / 255.0,
          "label": batch["label"].astype(np.int32)}


def train_dataset(config: ml_collections.ConfigDict, batch_size: int, seed: int) -> grain.MapDataset:
  """An infinite, shuffled (differently each epoch) MapDataset of this host's training batches.

  `batch_size` is the global batch; each host gets its batch_size / process_count examples of it.
  Random-access: batch k is a pure function of (seed, k), which is what makes resume exact.
  """
  hosts = jax.process_count()
  if batch_size % hosts:
    raise UserError(f"batch_size={batch_size} is not divisible by the {hosts} hosts.")
  source = _source(config.dataset, config.dataset.train_split)
  indices = (_kept_indices(source, config.dataset.exclude_labels) if config.dataset.exclude_labels
             else np.arange(len(source)))
  if len(indices) < batch_size:
    raise UserError(f"The training split has {len(indices)} examples, fewer than one batch of "
                    f"{batch_size}; lower config.batch_size.")
  local = batch_size // hosts
  host_slice = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  ds = grain.MapDataset.source(ShuffledBatches(np.arange(len(indices)), batch_size, seed))

  def load(positions):
    positions = positions[host_slice]
    return {**_to_float(_gather(source, indices[positions])), "index": positions.astype(np.int32)}

  px, hflip = config.dataset.translate_px, config.dataset.hflip
  if not px and not hflip:
    return ds.map(load)
  keep_clean = config.teacher.view == "clean"

  def load_and_augment(positions, rng):
    # Offsets and flips are drawn for the global batch, then sliced, so any host count sees the same.
    offsets = random_offsets(rng, px, batch_size)[:, host_slice] if px else None
    flips = (rng.random(batch_size) < 0.5)[host_slice] if hflip else None
    batch = load(positions)
    clean = {"teacher_image": batch["image"]} if keep_clean else {}
    images = shift(batch["image"], px, offsets) if px else batch["image"]
    if hflip:
      images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    return {**batch, **clean, "image": images}

  return ds.random_map(load_and_augment, seed=seed + 1)


def array_dataset(arrays: dict, batch_size: int, seed: int, what: str = "The training set") -> grain.MapDataset:
  """train_dataset's batches over in-memory arrays {field: (N, ...)} (token rows, a teacher cache):
  every field plus 'index' (the row), uint8 'image's as float32 in [0, 1]; host-sliced and
  reshuffled every epoch like train_dataset, so batch k is a pure function of (seed, k)."""
  hosts = jax.process_count()
  if batch_size % hosts:
    raise UserError(f"batch_size={batch_size} is not divisible by the {hosts} hosts.")
  count = len(next(iter(arrays.values())))
  if count < batch_size:
    raise UserError(f"{what} has {count} rows, fewer than one batch of {batch_size}; lower config.batch_size.")
  local = batch_size // hosts
  host_slice = slice(jax.process_index() * local, (jax.process_index() + 1) * local)

  def load(positions):
    positions = positions[host_slice]
    batch = {k: v[positions] for k, v in arrays.items()}
    if "image" in batch and batch["image"].dtype == np.uint8:
      batch["image"] = batch["image"].astype(np.float32) / 255.0
    if "label" in batch:
      batch["label"] = batch["label"].astype(np.int32)
    return {**batch, "index": positions.astype(np.int32)}

  return grain.MapDataset.source(ShuffledBatches(np.arange(count), batch_size, seed)).map(load)


def num_train_examples(config: ml_collections.ConfigDict) -> int:
  """Examples in the training split after exclusions (all hosts together)."""
  source = _source(config.dataset, config.dataset.train_split)
  if config.dataset.exclude_labels:
    return len(_kept_indices(source, config.dataset.exclude_labels))
  return len(source)


def eval_batches(dataset_config: ml_collections.ConfigDict, split: str, batch_size: int):
  """Yields this host's examples of `split` in order, in batches padded to `batch_size` with mask 0."""
  source = _source(dataset_config, split)
  indices = np.arange(jax.process_index(), len(source), jax.process_count())
  local_batch = batch_size // jax.process_count()
  for start in range(0, len(indices), local_batch):
    chunk = indices[start:start + local_batch]
    batch = _to_float(_gather(source, chunk))
    pad = local_batch - len(chunk)
    batch["mask"] = np.concatenate([np.ones(len(chunk), np.float32), np.zeros(pad, np.float32)])
    if pad:
      batch["image"] = np.concatenate([batch["image"], np.zeros((pad,) + batch["image"].shape[1:], np.float32)])
      batch["label"] = np.concatenate([batch["label"], np.zeros(pad, np.int32)])
    yield batch


def example_shape(dataset_config: ml_collections.ConfigDict) -> tuple:
  """(H, W, C) of one image, read from the training split."""
  source = sources.open_split(dataset_config.name, dataset_config.train_split,
                              dataset_config.data_dir, dataset_config.download)
  return tuple(source[0]["image"].shape)
