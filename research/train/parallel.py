"""Run per-device steps over devices: `jax.shard_map` on a Mesh, or the thin `jax.pmap` wrapper.

Both engines take the same per-device functions (research/train/step.py), written with
collectives over the axis `data`, and expose the same methods, so the loop does not care:

  put_replicated(tree)   place a host pytree on every device (state, teacher variables)
  put_batch(batch)       place this host's batch, split over the devices
  compile_train(fn)      fn(state, teacher_variables, batch) -> (state, metrics); state donated
  compile_eval(fn)       fn(variables, batch) -> psum'd metrics
  unreplicate(tree)      one global copy of a replicated pytree, for checkpoints and host reads
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from research.errors import UserError
from research.train.step import AXIS


def select_devices(num_devices: int) -> list:
  """All devices, or the first `num_devices` per host (multi-host runs must use them all)."""
  devices = jax.devices()
  if num_devices in (-1, len(devices)):
    return devices
  if jax.process_count() > 1:
    raise UserError("parallel.num_devices must be -1 in multi-host runs.")
  if not 0 < num_devices <= len(devices):
    raise UserError(f"parallel.num_devices={num_devices}, but this machine has {len(devices)} devices.")
  return devices[:num_devices]


def check_batch_size(batch_size: int, num_devices: int, what: str = "batch_size") -> None:
  if batch_size % num_devices:
    raise UserError(f"config.{what}={batch_size} is not divisible by the {num_devices} devices: "
                    f"use a multiple of {num_devices} (e.g. {num_devices * max(1, batch_size // num_devices)}) "
                    "or set config.parallel.num_devices.")


class ShardMapEngine:
  """The per-device functions under `jax.jit(jax.shard_map(...))` on a 1-D mesh named `data`."""

  def __init__(self, devices):
    self.mesh = Mesh(np.asarray(devices), (AXIS,))
    self.num_devices = len(devices)
    self._replicated = NamedSharding(self.mesh, P())
    self._sharded = NamedSharding(self.mesh, P(AXIS))

  def put_replicated(self, tree):
    return jax.device_put(tree, self._replicated)

  def put_batch(self, batch):
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(self._sharded, x), batch)

  def compile_train(self, train_step):
    # check_vma=False keeps pmap's semantics: inside the step, gradients are per device and the
    # step averages them itself (lax.pmean). With the check on, differentiating w.r.t. replicated
    # params would already psum the gradients and the pmean would scale them by the device count.
    mapped = jax.shard_map(train_step, mesh=self.mesh, in_specs=(P(), P(), P(AXIS)),
                           out_specs=(P(), P()), check_vma=False)
    return jax.jit(mapped, donate_argnums=(0,))

  def compile_eval(self, eval_step):
    return jax.jit(jax.shard_map(eval_step, mesh=self.mesh, in_specs=(P(), P(AXIS)), out_specs=P()))

  def unreplicate(self, tree):
    return tree


class PmapEngine:
  """The same per-device functions under `jax.pmap`, with a leading device axis on every array."""

  def __init__(self, devices):
    self.devices = [d for d in devices if d.process_index == jax.process_index()]
    self.num_devices = len(devices)
    # Where pmap itself puts per-device arrays: the leading axis split over a `data` mesh.
    self._stacked = NamedSharding(Mesh(np.asarray(self.devices), (AXIS,)), P(AXIS))

  def put_replicated(self, tree):
    n = len(self.devices)
    return jax.device_put(jax.tree.map(lambda x: np.broadcast_to(x, (n,) + np.shape(x)), tree),
                          self._stacked)

  def put_batch(self, batch):
    n = len(self.devices)
    return jax.device_put(jax.tree.map(lambda x: np.reshape(x, (n, -1) + x.shape[1:]), batch),
                          self._stacked)

  def compile_train(self, train_step):
    return jax.pmap(train_step, axis_name=AXIS, devices=self.devices, donate_argnums=(0,))

  def compile_eval(self, eval_step):
    compiled = jax.pmap(eval_step, axis_name=AXIS, devices=self.devices)
    return lambda variables, batch: jax.tree.map(lambda x: x[0], compiled(variables, batch))

  def unreplicate(self, tree):
    return jax.tree.map(lambda x: x[0], tree)


def make_engine(mode: str, devices):
  return ShardMapEngine(devices) if mode == "shard_map" else PmapEngine(devices)
