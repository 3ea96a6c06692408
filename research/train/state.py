"""The student's train state: everything a bit-exact resume needs, except the data position."""
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
  """`variables` are the linen collections ('params', and e.g. 'batch_stats');
  the optimizer only updates `variables['params']`. `rng` is the run's base key: the step
  derives its randomness with fold_in(rng, step), so nothing else needs threading.
  """
  step: jnp.ndarray
  variables: Any
  opt_state: Any
  rng: jnp.ndarray

  @classmethod
  def create(cls, variables, tx: optax.GradientTransformation, rng: jnp.ndarray) -> "TrainState":
    variables = dict(variables)
    return cls(step=jnp.zeros((), jnp.int32), variables=variables,
               opt_state=tx.init(variables["params"]), rng=rng)


def init_variables(model, example_shape: tuple, rng: jnp.ndarray) -> dict:
  """Initialises a model's variables from one dummy example of shape `example_shape`."""
  return dict(jax.jit(lambda r: model.init(r, jnp.zeros((1,) + tuple(example_shape)), train=False))(rng))
