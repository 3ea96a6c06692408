"""FitNets (Romero et al. 2015): regress the teacher's hint layer from the student's guided layer."""
import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from research.errors import UserError


@dataclasses.dataclass(frozen=True)
class Hint:
  """L2 between a trainable regressor of the student tap and the teacher tap (mean over elements).

  The regressor is a 1×1 convolution for spatial maps, a linear layer for vectors; it is part of
  the student's train state and checkpoints but not of the exported student. With `adapter=False`
  the two taps must already have the same shape.
  """
  student_taps: tuple
  teacher_taps: tuple
  adapter: bool = True

  def regressor(self, teacher_shape) -> nn.Module:
    if len(teacher_shape) == 3:
      return nn.Conv(teacher_shape[-1], (1, 1), name="regressor")
    return nn.Dense(teacher_shape[-1], name="regressor")

  def check(self, student_shapes, teacher_shapes) -> None:
    s, t = student_shapes[self.student_taps[0]], teacher_shapes[self.teacher_taps[0]]
    if not self.adapter and s != t:
      raise UserError(f"FitNets without an adapter needs equal shapes, but student tap "
                      f"{self.student_taps[0]!r} is {s} and teacher tap {self.teacher_taps[0]!r} is {t}. "
                      "Set config.method.adapter=True (a 1×1-conv regressor) or pick matching taps.")
    if self.adapter and (len(s) != len(t) or s[:-1] != t[:-1]):
      raise UserError(f"The FitNets regressor maps channels only, but student tap {self.student_taps[0]!r} "
                      f"is {s} and teacher tap {self.teacher_taps[0]!r} is {t}: pick taps with the same "
                      "spatial size (config.method.student_taps / teacher_taps).")

  def init(self, rng, student_shapes, teacher_shapes):
    if not self.adapter:
      return {}, {}
    s_shape = student_shapes[self.student_taps[0]]
    params = self.regressor(teacher_shapes[self.teacher_taps[0]]).init(rng, jnp.zeros((1,) + s_shape))
    return {"regressor": params["params"]}, {}

  def __call__(self, adapters, state, student, teacher, context):
    del context
    s, t = student[self.student_taps[0]], teacher[self.teacher_taps[0]]
    if self.adapter:
      s = self.regressor(t.shape[1:]).apply({"params": adapters["regressor"]}, s)
    return jnp.mean((s - t) ** 2), state
