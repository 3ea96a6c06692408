"""The per-device train and eval steps: pure functions, written in the pmap programming model.

Each runs on one device's slice of the batch and averages over the named axis `data` with
collectives; research/train/parallel.py runs them through `jax.shard_map` (or `jax.pmap`).
The teacher's forward pass runs inside the same jit, in inference mode, outside the gradient;
a run from a teacher cache has no teacher model, its batches carry the signal instead.
"""
import jax
import jax.numpy as jnp
import optax
from jax import lax

from research import losses, methods
from research.methods import taps
from research.teachers.signal import SIGNAL_KEYS
from research.train.state import TrainState

AXIS = "data"


def make_train_step(student, teachers, method, tx: optax.GradientTransformation):
  """Returns train_step(state, teacher_variables, batch) -> (new_state, metrics).

  `teachers` is a tuple of models (empty for supervised training) and `teacher_variables` the
  matching tuple of their variables; several teachers act as one, their probabilities averaged.
  The student and its adapters are trained together; the method's state (e.g. CRD's memory
  banks) is updated from the step's outputs. Metrics are averaged over devices.
  Randomness comes from fold_in(state.rng, step): folded with the device index for dropout,
  shared by all devices for mixup's ratio and CRD's negatives (drawn per example).
  """

  def train_step(state: TrainState, teacher_variables, batch):
    step_rng = jax.random.fold_in(state.rng, state.step)
    dropout_rng = jax.random.fold_in(step_rng, lax.axis_index(AXIS))
    method_rng = jax.random.split(dropout_rng)[1]
    mixup_rng, shared_rng = jax.random.split(step_rng)  # the same on every device
    images, labels = batch["image"], batch["label"]
    teacher_images = batch.get("teacher_image", images)
    mix = None
    if method.mixup:
      ratio = jax.random.beta(mixup_rng, method.mixup, method.mixup)
      images, teacher_images = (mixup(x, ratio) for x in (images, teacher_images))
      mix = (ratio, jnp.roll(labels, 1))
    teacher_features = None
    if teachers:
      teacher_features = lax.stop_gradient(teacher_forward(teachers, teacher_variables, teacher_images,
                                                           method.teacher_taps, method.temperature))
    elif "signal_log_probs" in batch:  # a level-logits teacher cache: its log-probs are logits
      teacher_features = {"logits": batch["signal_log_probs"].astype(jnp.float32)}
    context = {"labels": labels, "mix": mix, "index": batch.get("index"), "step": state.step,
               "rng": method_rng, "step_rng": shared_rng,
               "signal": {k: batch[k] for k in SIGNAL_KEYS if k in batch}}
    mutable = [name for name in state.variables if name != "params"]

    def loss_fn(trainable):
      variables = {**state.variables, "params": trainable["student"]}
      features, new_collections = taps.forward(student, variables, images, method.student_taps,
                                               mutable=mutable, train=True, rngs={"dropout": dropout_rng})
      loss, method_state, terms = method.loss(trainable["adapters"], state.method_state, features,
                                              teacher_features, context)
      return loss, (features["logits"], new_collections, method_state, terms)

    trainable = state.trainable()
    (loss, (logits, new_collections, method_state, terms)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(trainable)
    grads = lax.pmean(grads, AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    trainable = optax.apply_updates(trainable, updates)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
               **{f"loss_{name}": value for name, value in terms.items()}}
    if teacher_features is not None:
      teacher_labels = jnp.argmax(teacher_features["logits"], -1)
      metrics["teacher_agreement"] = jnp.mean(jnp.argmax(logits, -1) == teacher_labels)
    new_state = state.replace(
        step=state.step + 1, opt_state=opt_state, adapters=trainable["adapters"],
        method_state=method_state,
        variables={**state.variables, **new_collections, "params": trainable["student"]})
    return new_state, lax.pmean(metrics, AXIS)

  return train_step


def teacher_forward(teachers, teacher_variables, images, tap_names, temperature) -> dict:
  """The teachers' features in inference mode: the first teacher's taps, and 'logits' whose
  softmax at `temperature` is the teachers' average (research.methods.ensemble_logits)."""
  features, _ = taps.forward(teachers[0], teacher_variables[0], images, tap_names, train=False)
  if len(teachers) > 1:
    all_logits = [features["logits"]] + [t.apply(v, images, train=False)
                                         for t, v in zip(teachers[1:], teacher_variables[1:])]
    features["logits"] = methods.ensemble_logits(all_logits, temperature)
  return features


def mixup(images: jnp.ndarray, ratio: jnp.ndarray) -> jnp.ndarray:
  """ratio·x_i + (1−ratio)·x_{i−1} within the device's batch (big_vision's pairing by a roll)."""
  return ratio * images + (1.0 - ratio) * jnp.roll(images, 1, axis=0)


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
