"""The engine: state, per-device steps, parallel wrappers, checkpoints, metrics and the loop."""
from research.train.loop import train_and_evaluate
