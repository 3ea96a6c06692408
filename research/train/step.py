"""The per-device train and eval steps: pure functions, written in the pmap programming model.

Each runs on one device's slice of the batch and averages over the named axis `data` with
collectives; research/train/parallel.py runs them through `jax.shard_map` (or `jax.pmap`).
The teacher's forward pass runs inside the same jit, in inference mode, outside the gradient.
"""
import jax
import jax.numpy as jnp
import optax
from jax import lax

from research import losses
from research.train.state import TrainState

AXIS = "data"


def make_train_step(student, teacher, method, tx: optax.GradientTransformation):
  """Returns train_step(state, teacher_variables, batch) -> (new_state, metrics).

  `teacher` may be None (supervised training). Metrics are averaged over devices.
  Randomness (dropout) comes from fold_in(fold_in(state.rng, step), device index).
  """

  def train_step(state: TrainState, teacher_variables, batch):
    rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(AXIS))
    images, labels = batch["image"], batch["label"]
    teacher_logits = None
    if teacher is not None:
      teacher_logits = lax.stop_gradient(teacher.apply(teacher_variables, images, train=False))
    mutable = [name for name in state.variables if name != "params"]

    def loss_fn(params):
      variables = {**state.variables, "params": params}
      logits, new_collections = student.apply(variables, images, train=True, rngs={"dropout": rng},
                                              mutable=mutable)
      loss = jnp.mean(method.loss(logits, teacher_logits, labels))
      return loss, (logits, new_collections)

    params = state.variables["params"]
    (loss, (logits, new_collections)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    grads = lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, params)
    params = optax.apply_updates(params, updates)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    if teacher_logits is not None:
      metrics["teacher_agreement"] = jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1))
    new_state = state.replace(step=state.step + 1, opt_state=opt_state,
                              variables={**state.variables, **new_collections, "params": params})
    return new_state, lax.pmean(metrics, AXIS)

  return train_step


def make_eval_step(model):
  """Returns eval_step(variables, batch) -> sums over all devices of correct, loss and count.

  Padding examples (mask 0) count for nothing, so any split size evaluates exactly.
  """

  def eval_step(variables, batch):
    logits = model.apply(variables, batch["image"], train=False)
    mask = batch["mask"]
    sums = {
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "loss": jnp.sum(losses.cross_entropy(logits, batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    return lax.psum(sums, AXIS)

  return eval_step
