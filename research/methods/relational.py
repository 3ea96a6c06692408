"""Adapter-free feature terms: attention transfer, RKD, PKT and similarity-preserving.

Each term compares named taps of the student and the teacher (research/methods/taps.py) and
returns a scalar for the device's batch; relational terms (RKD, PKT, SP) compare examples
within that batch, as the papers' per-GPU implementations do.
"""
import dataclasses

import jax.numpy as jnp

from research import losses
from research.errors import UserError
from research.methods.term import Stateless


@dataclasses.dataclass(frozen=True)
class Attention(Stateless):
  """Zagoruyko & Komodakis 2017: Σ over tap pairs of the attention-map distance (spatial sizes must match)."""
  student_taps: tuple
  teacher_taps: tuple
  p: float

  def check(self, student_shapes: dict, teacher_shapes: dict) -> None:
    for s, t in zip(self.student_taps, self.teacher_taps):
      if len(student_shapes[s]) != 3 or student_shapes[s][:2] != teacher_shapes[t][:2]:
        raise UserError(f"Attention transfer compares spatial maps of equal size, but student tap {s!r} "
                        f"is {student_shapes[s]} and teacher tap {t!r} is {teacher_shapes[t]}. Pick "
                        "taps of the same resolution in config.method.student_taps / teacher_taps.")

  def __call__(self, adapters, state, student, teacher, context):
    del adapters, context
    total = sum(jnp.mean(losses.attention_transfer(student[s], teacher[t], self.p))
                for s, t in zip(self.student_taps, self.teacher_taps))
    return total, state


@dataclasses.dataclass(frozen=True)
class Relational(Stateless):
  """RKD (distance + angle), PKT or SP on one tap pair, flattened to (B, features) as needed."""
  kind: str  # rkd | pkt | sp
  student_taps: tuple
  teacher_taps: tuple
  rkd_distance: float = 25.0
  rkd_angle: float = 50.0

  def __call__(self, adapters, state, student, teacher, context):
    del adapters, context
    flat = lambda x: x.reshape((x.shape[0], -1))
    s, t = flat(student[self.student_taps[0]]), flat(teacher[self.teacher_taps[0]])
    if self.kind == "rkd":
      loss = self.rkd_distance * losses.rkd_distance(s, t) + self.rkd_angle * losses.rkd_angle(s, t)
    elif self.kind == "pkt":
      loss = losses.pkt(s, t)
    else:
      loss = losses.similarity_preserving(s, t)
    return loss, state
