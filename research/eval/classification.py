"""Load a finished run's model and compute its logits over a dataset split, for offline analysis.

The trainer's own evaluation (research/train/loop.py) reports aggregate metrics inside the
data-parallel step; this module is for analyses that need every logit, such as choosing a
class bias on a validation split (Hinton et al.'s omitted-digit experiment).
"""
import json
import pathlib

import jax
import ml_collections
import numpy as np

from research import config as config_lib
from research import models
from research.data import pipeline
from research.train import checkpoint


def load_run(workdir: str):
  """Returns (config, model, variables) of the run in `workdir`, read-only."""
  config = config_lib.resolve(json.loads((pathlib.Path(workdir) / "config.json").read_text()))
  model = models.build(config.model)
  shape = pipeline.example_shape(config.dataset)
  return config, model, checkpoint.load_model_variables(workdir, model, shape, what="run")


def predict(model, variables, dataset_config: ml_collections.ConfigDict, split: str,
            batch_size: int = 1000):
  """(logits [N, classes], labels [N]) of `model` on every example of `split`, in order."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  logits, labels = [], []
  for batch in pipeline.eval_batches(dataset_config, split, batch_size):
    keep = batch["mask"] > 0
    logits.append(np.asarray(apply(variables, batch["image"]))[keep])
    labels.append(batch["label"][keep])
  return np.concatenate(logits), np.concatenate(labels)


def errors(logits: np.ndarray, labels: np.ndarray, bias: np.ndarray | None = None) -> int:
  """Number of misclassified examples, optionally after adding `bias` to the logits."""
  shifted = logits if bias is None else logits + bias
  return int(np.sum(np.argmax(shifted, -1) != labels))
