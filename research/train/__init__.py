"""The engine: state, per-device steps, parallel wrappers, checkpoints, metrics and the loop.

`train_and_evaluate` is imported lazily, so that the step and engine modules can be used (e.g.
by benchmarks) without the data stack (Grain, TFDS) installed.
"""


def __getattr__(name):
  if name == "train_and_evaluate":
    from research.train.loop import train_and_evaluate  # pylint: disable=import-outside-toplevel
    return train_and_evaluate
  raise AttributeError(f"module 'research.train' has no attribute {name!r}")
