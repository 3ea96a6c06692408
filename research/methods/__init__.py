"""Distillation methods: what the step needs from the teacher, and the loss.

A method is a small frozen dataclass with `needs_teacher` and
`loss(student_logits, teacher_logits, labels) -> per-example loss`.
The trainer is the same for all methods; `build(config.method)` picks one.
"""
import dataclasses

import jax.numpy as jnp
import ml_collections

from research import losses
from research.errors import UserError


@dataclasses.dataclass(frozen=True)
class Supervised:
  """Plain cross-entropy on labels: how teachers (and baselines) are trained."""
  needs_teacher = False

  def loss(self, student_logits, teacher_logits, labels) -> jnp.ndarray:
    del teacher_logits
    return losses.cross_entropy(student_logits, labels)


@dataclasses.dataclass(frozen=True)
class HintonKD:
  """Hinton et al. 2015 soft targets at temperature T, mixed with hard labels by α."""
  temperature: float
  alpha: float
  needs_teacher = True

  def __post_init__(self):
    if self.temperature <= 0:
      raise UserError(f"method.temperature must be > 0, got {self.temperature}.")
    if not 0.0 <= self.alpha <= 1.0:
      raise UserError(f"method.alpha must be in [0, 1], got {self.alpha}.")

  def loss(self, student_logits, teacher_logits, labels) -> jnp.ndarray:
    return losses.hinton_kd(student_logits, teacher_logits, labels, self.temperature, self.alpha)


def build(config: ml_collections.ConfigDict):
  """Returns the method named by `config.name`."""
  if config.name == "supervised":
    return Supervised()
  if config.name == "hinton_kd":
    return HintonKD(config.temperature, config.alpha)
  raise UserError(f"Unknown method.name={config.name!r}; choose one of: supervised, hinton_kd.")
