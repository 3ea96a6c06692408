"""The student's train state: everything a bit-exact resume needs, except the data position."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

# Collections that only record features during a forward pass (research/methods/taps.py).
_RECORDED = ("taps", "intermediates")


@flax.struct.dataclass
class TrainState:
  """`variables` are the student's linen collections ('params', and e.g. 'batch_stats');
  `adapters` the method's trainable extras (regressors, embedding heads): trained with the
  student and checkpointed, but not part of the exported student; `method_state` what the method
  carries between steps (CRD's memory banks). The optimizer updates `trainable()`.
  `rng` is the run's base key: the step derives its randomness with fold_in(rng, step).
  """
  step: jnp.ndarray
  variables: Any
  adapters: Any
  method_state: Any
  opt_state: Any
  rng: jnp.ndarray

  def trainable(self) -> dict:
    return {"student": self.variables["params"], "adapters": self.adapters}

  @classmethod
  def create(cls, variables, tx: optax.GradientTransformation, rng: jnp.ndarray,
             adapters=None, method_state=None) -> "TrainState":
    state = cls(step=jnp.zeros((), jnp.int32), variables=dict(variables), adapters=adapters or {},
                method_state=method_state or {}, opt_state=None, rng=rng)
    return state.replace(opt_state=tx.init(state.trainable()))


def init_variables(model, example_shape: tuple, rng: jnp.ndarray, dtype=jnp.float32) -> dict:
  """Initialises a model's variables from one dummy example of shape `example_shape` and `dtype`
  (float images, or int32 tokens for language models)."""
  variables = jax.jit(lambda r: model.init(r, jnp.zeros((1,) + tuple(example_shape), dtype),
                                           train=False))(rng)
  return {name: value for name, value in variables.items() if name not in _RECORDED}
