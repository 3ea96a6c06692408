"""Multi-host = jax.distributed: two processes × 4 CPU devices train exactly like one process × 8.

The processes talk over loopback (gloo CPU collectives). Each reads only its own slice of every
global batch, so both runs see the same global batches and must end with the same parameters.
"""
import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np

from research import config as config_lib
from research import models
from research.train import checkpoint
from research.train.state import init_variables
from tree_asserts import assert_trees_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = r"""
import json, sys
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
address, processes, index, config, workdir = sys.argv[1:]
if int(processes) > 1:
  jax.distributed.initialize(coordinator_address=address, num_processes=int(processes),
                             process_id=int(index))
from research.train.loop import train_and_evaluate
result = train_and_evaluate(json.loads(config), workdir)
print("RESULT", jax.process_index(), jax.process_count(), jax.device_count(), json.dumps(result))
"""


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(processes: int, devices_per_process: int, config: dict, workdir: str) -> list:
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
  address = f"127.0.0.1:{_free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", WORKER, address, str(processes), str(i),
                             json.dumps(config), workdir],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(processes)]
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-3000:]
  return [json.loads(line.split(" ", 4)[4]) for out in outputs for line in out.splitlines()
          if line.startswith("RESULT")]


def test_two_processes_train_like_one(data_dir, tmp_path):
  config = {"dataset": {"name": "digits", "data_dir": data_dir, "translate_px": 1},
            "model": {"name": "mlp", "widths": [32]}, "batch_size": 64, "eval_batch_size": 96,
            "num_steps": 12, "checkpoint_every_steps": 6, "log_every_steps": 4, "seed": 3}
  one = _run(1, 8, config, str(tmp_path / "one"))
  two = _run(2, 4, config, str(tmp_path / "two"))
  assert len(one) == 1 and len(two) == 2
  assert two[0] == two[1], "both hosts must report the same global evaluation"
  assert two[0]["count"] == one[0]["count"] == 360  # every test example evaluated once
  assert two[0]["errors"] == one[0]["errors"]
  model = models.build(config_lib.resolve(config).model)
  expected = jax.eval_shape(lambda: init_variables(model, (8, 8, 1), jax.random.PRNGKey(0)))
  params_one = checkpoint.load_variables(str(tmp_path / "one"), expected, "run")
  params_two = checkpoint.load_variables(str(tmp_path / "two"), expected, "run")
  # Same data and maths; only the order of the cross-device float sums may differ.
  assert_trees_close(params_two, params_one, rtol=1e-5, atol=1e-6, what="params")
  assert not np.allclose(params_one["params"]["Dense_0"]["kernel"],
                         init_variables(model, (8, 8, 1), jax.random.split(jax.random.PRNGKey(3))[0])
                         ["params"]["Dense_0"]["kernel"]), "training must have moved the params"
