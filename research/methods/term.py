"""What every method term provides, and the defaults for terms without adapters or state.

A term is a frozen dataclass with `student_taps`, `teacher_taps`, and
  check(student_shapes, teacher_shapes)       raise UserError if the taps cannot be compared
  init(rng, student_shapes, teacher_shapes)   -> (adapter params, method state)
  __call__(adapters, state, student, teacher, context) -> (scalar loss, new state)
"""


class Stateless:
  """A term with no adapters and no state, comparing taps of any shapes."""

  def check(self, student_shapes, teacher_shapes) -> None:
    del student_shapes, teacher_shapes

  def init(self, rng, student_shapes, teacher_shapes):
    del rng, student_shapes, teacher_shapes
    return {}, {}
