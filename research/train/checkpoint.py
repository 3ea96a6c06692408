"""Orbax checkpoints of a run, and read-only loading of a teacher's variables.

A run's workdir holds `checkpoints/<step>/` with three items:
  variables  the model's linen collections ('params', ...): what a teacher or an export needs
  train      step, optimizer state, base RNG key, the method's adapters and state (e.g. CRD's
             memory banks): needed to resume, never part of the exported student
  data       the Grain iterator state (JSON), so a resumed run sees the same batches
Saving is asynchronous and atomic (Orbax writes to a temporary folder and renames it).
"""
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from research.errors import UserError
from research.train.state import init_variables


def _checkpoint_dir(path: str) -> pathlib.Path:
  """Accepts a workdir or its checkpoints/ folder."""
  path = pathlib.Path(path).expanduser().absolute()
  return path / "checkpoints" if (path / "checkpoints").is_dir() else path


class Checkpointer:
  """Saves and restores a run's state in `workdir/checkpoints`, keeping the last `keep`."""

  def __init__(self, workdir: str, keep: int):
    self._manager = ocp.CheckpointManager(
        pathlib.Path(workdir).absolute() / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=True,
                                             create=True),
        item_names=("variables", "train", "data"))

  def latest_step(self):
    return self._manager.latest_step()

  def save(self, step: int, state, data_state: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        variables=ocp.args.StandardSave(state.variables),
        train=ocp.args.StandardSave(_train_item(state)),
        data=ocp.args.JsonSave(data_state)))

  def restore(self, host_state):
    """Restores the latest checkpoint into the structure of `host_state` (numpy leaves).

    Returns (state, data_state) with numpy leaves. A checkpoint of another architecture
    fails with the first mismatching parameter named.
    """
    step = self._manager.latest_step()
    check_compatible(_saved_variables(self._manager.directory / str(step)), host_state.variables, "the checkpoint in this workdir",
                     "config.model (or use a new --workdir)")
    restored = self._manager.restore(step, args=ocp.args.Composite(
        variables=ocp.args.StandardRestore(host_state.variables),
        train=ocp.args.StandardRestore(_train_item(host_state)),
        data=ocp.args.JsonRestore()))
    train = restored["train"]
    state = host_state.replace(variables=restored["variables"], **train)
    return state, restored["data"]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def _train_item(state) -> dict:
  return {"step": state.step, "opt_state": state.opt_state, "rng": state.rng,
          "adapters": state.adapters, "method_state": state.method_state}


def _saved_variables(step_dir: pathlib.Path):
  """The saved `variables` tree with shape metadata at its leaves (nothing is read into memory)."""
  return ocp.PyTreeCheckpointHandler().metadata(step_dir / "variables").tree


def _shapes(tree) -> dict:
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): tuple(getattr(leaf, "shape", np.shape(leaf))) for path, leaf in flat}


def check_compatible(saved, expected, what: str, fix: str) -> None:
  """Raises UserError naming the first parameter whose presence or shape differs."""
  saved_shapes, expected_shapes = _shapes(saved), _shapes(expected)
  for name, shape in expected_shapes.items():
    if name not in saved_shapes:
      raise UserError(f"{what} has no parameter {name} (expected shape {shape}): it was saved from "
                      f"a different architecture. Fix {fix}.")
    if saved_shapes[name] != shape:
      raise UserError(f"{what}: parameter {name} has shape {saved_shapes[name]} but the configured "
                      f"model expects {shape}. Fix {fix}.")
  extra = sorted(set(saved_shapes) - set(expected_shapes))
  if extra:
    raise UserError(f"{what} has parameters the configured model lacks, e.g. {extra[0]}. Fix {fix}.")


def load_model_variables(path: str, model, example_shape: tuple, what: str = "teacher",
                         dtype=np.float32, step: int | None = None) -> dict:
  """`load_variables` for `model` on inputs of `example_shape` and `dtype`: the expected shapes
  come from its init."""
  expected = jax.eval_shape(lambda: init_variables(model, example_shape, jax.random.PRNGKey(0), dtype))
  return load_variables(path, expected, what, step)


def load_variables(path: str, expected_variables, what: str = "teacher", step: int | None = None) -> dict:
  """Reads the `variables` item of a run at `path` (its latest checkpoint, or `step`), read-only,
  as numpy arrays.

  `expected_variables` (e.g. from jax.eval_shape of model.init) is checked against what was
  saved, so an architecture mismatch names the offending parameter instead of failing later.
  """
  directory = _checkpoint_dir(path)
  if not directory.is_dir():
    raise UserError(f"{what} checkpoint not found: {path} does not exist. Train the {what} first "
                    f"(python -m experiments.distill --config=...:teacher --workdir=DIR) and point "
                    f"config.teacher.checkpoint at DIR.")
  manager = ocp.CheckpointManager(
      directory, options=ocp.CheckpointManagerOptions(read_only=True, create=False),
      item_names=("variables", "train", "data"))
  if step is not None and step not in manager.all_steps():
    raise UserError(f"{what} checkpoint {directory} has no step {step}; it holds steps "
                    f"{sorted(manager.all_steps())}.")
  step = manager.latest_step() if step is None else step
  if step is None:
    raise UserError(f"{what} checkpoint not found: {directory} holds no finished checkpoint. "
                    f"Train the {what} to completion first, or fix config.teacher.checkpoint.")
  check_compatible(_saved_variables(directory / str(step)), expected_variables,
                   f"{what} checkpoint {directory}/{step}", "config.teacher.model to match the teacher")
  target = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), expected_variables)
  restored = manager.restore(step, args=ocp.args.Composite(variables=ocp.args.StandardRestore(target)))
  manager.close()
  return restored["variables"]
