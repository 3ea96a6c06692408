"""Decoupled KD (Zhao et al. 2022) as a method term, with the paper's linear warm-up."""
import dataclasses

import jax.numpy as jnp

from research import losses
from research.methods.term import Stateless


@dataclasses.dataclass(frozen=True)
class DecoupledKD(Stateless):
  """T²·(α·TCKD + β·NCKD), scaled by min(step / warmup_steps, 1)."""
  alpha: float
  beta: float
  temperature: float
  warmup_steps: int
  student_taps = ("logits",)
  teacher_taps = ("logits",)

  def __call__(self, adapters, state, student, teacher, context):
    del adapters
    loss = jnp.mean(losses.dkd(student["logits"], teacher["logits"], context["labels"],
                               self.temperature, self.alpha, self.beta))
    warmup = jnp.minimum(context["step"] / max(self.warmup_steps, 1), 1.0) if self.warmup_steps else 1.0
    return warmup * loss, state
