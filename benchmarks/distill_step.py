r"""How fast is the Hinton MLP pair's distill step, against the matmul peak and against PyTorch?

One run measures, in the same process, on the same cores and threads:

  peak   the best f32 `jnp.dot` of square matrices under jit (GFLOP/s), the machine's matmul peak;
  ours   exactly the step the trainer runs: research.train.step.make_train_step(student, teacher,
         HintonKD(T=20, α=0.9), optax.adam(1e-3)) through ShardMapEngine.compile_train on one
         device (jit(shard_map) with the state donated), the batch already on the device;
  torch  the same step in eager PyTorch (nn.Linear, torch.optim.Adam, the same loss), started from
         the same weights, so both print the same loss.

Teacher MLP 784-1200-1200-10 (inference mode, forward only), student MLP 784-800-800-10.
The FLOPs of a step are counted analytically (matmuls only) and cross-checked against XLA's
cost_analysis() of the compiled step. Goals (from the issue): ours ≥ 80 % of the matmul peak,
ours ≤ 0.9× torch's time. Small batches cannot reach peak on a CPU; the larger batch sizes show
how close the step gets when the matmuls are big enough.

Run, pinned to two cores (both frameworks then use two threads):
  pip install -e .[bench]
  taskset -c 0,1 python benchmarks/distill_step.py
  taskset -c 0,1 python benchmarks/distill_step.py --batch_sizes=128,512,1024 --steps=20 --repeats=7
On a GPU: python benchmarks/distill_step.py --device=gpu   (torch then runs on cuda)

Timings are medians over `--repeats` of `--steps` steps each, after warm-up; ours and torch take
turns in every repeat, so both see the same background load. See benchmarks/README.md for results.
"""
import argparse
import os
import platform
import statistics
import sys
import time

# Run as a script from a checkout without `pip install -e .`: make the package importable.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TEACHER = (784, 1200, 1200, 10)
STUDENT = (784, 800, 800, 10)
TEMPERATURE, ALPHA, LR = 20.0, 0.9, 1e-3


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="128,512,1024", help="comma-separated batch sizes")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=7, help="timed repeats; the median counts")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="JAX backend; torch uses cuda for gpu (if it has it), else cpu")
  parser.add_argument("--peak_sizes", default="1024,2048,4096", help="square matmul sizes for the peak")
  parser.add_argument("--matmul_precision", choices=("default", "highest"), default="default",
                      help="default: what the trainer runs (on GPU JAX's default is TF32, and torch is "
                      "then allowed TF32 too); highest: true f32 matmuls in both")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch comparison")
  return parser.parse_args()


def mlp_flops(dims, batch: int, backward: bool) -> int:
  """Matmul FLOPs of an MLP with layer widths `dims` (input first) on `batch` examples.

  Forward: 2·B·in·out per layer. Backward: the weight gradient (2·B·in·out) for every layer and
  the input gradient (2·B·in·out) for all but the first layer, whose input (the image) needs none.
  Biases, activations, the loss and the optimizer are elementwise and not counted.
  """
  layers = list(zip(dims[:-1], dims[1:]))
  macs = sum(i * o for i, o in layers)
  if not backward:
    return 2 * batch * macs
  first = layers[0][0] * layers[0][1]
  return 2 * batch * macs + 2 * batch * macs + 2 * batch * (macs - first)


def step_flops(batch: int) -> int:
  return mlp_flops(TEACHER, batch, backward=False) + mlp_flops(STUDENT, batch, backward=True)


def machine_description() -> dict:
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
  return {"cpu": cpu, "cpu_count": os.cpu_count(), "affinity": affinity}


def timed(run_steps, sync, steps: int) -> float:
  """Seconds per step of `steps` back-to-back steps, waiting for the device at the end."""
  start = time.perf_counter()
  run_steps(steps)
  sync()
  return (time.perf_counter() - start) / steps


# ------------------------------------------------------------------------------------------ JAX


def matmul_peak(jax, jnp, device, sizes, repeats: int) -> tuple:
  """Best GFLOP/s of a jitted f32 square matmul (and the size that gave it) on `device`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  dot = jax.jit(jnp.dot)
  best = (0.0, 0)
  for n in sizes:
    rng = np.random.default_rng(n)
    a = jax.device_put(rng.standard_normal((n, n), np.float32), device)
    b = jax.device_put(rng.standard_normal((n, n), np.float32), device)
    dot(a, b).block_until_ready()
    reps = max(2, int(2e10 // (2 * n**3)))  # ~20 GFLOP per timing: long enough for a GPU too
    for _ in range(repeats):
      start = time.perf_counter()
      for _ in range(reps):
        c = dot(a, b)
      c.block_until_ready()
      best = max(best, (2 * n**3 * reps / (time.perf_counter() - start) / 1e9, n))
  return best


def make_ours(jax, device, batch_size: int):
  """The trainer's step on one device; returns (run_steps, sync, xla_flops, loss_of_first_step, params)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from research import methods  # pylint: disable=import-outside-toplevel
  from research.models import MLP  # pylint: disable=import-outside-toplevel
  from research.train import parallel, step as step_lib  # pylint: disable=import-outside-toplevel
  from research.train.state import TrainState, init_variables  # pylint: disable=import-outside-toplevel

  teacher = MLP(TEACHER[1:-1], TEACHER[-1])
  student = MLP(STUDENT[1:-1], STUDENT[-1])
  example_shape = (28, 28, 1)
  t_key, s_key, state_key = jax.random.split(jax.random.PRNGKey(0), 3)
  teacher_variables = init_variables(teacher, example_shape, t_key)
  student_variables = init_variables(student, example_shape, s_key)
  tx = optax.adam(LR)
  engine = parallel.ShardMapEngine([device])
  host_state = jax.device_get(TrainState.create(student_variables, tx, state_key))
  params = jax.device_get({"teacher": teacher_variables["params"], "student": student_variables["params"]})
  state = engine.put_replicated(host_state)
  teacher_variables = engine.put_replicated(jax.device_get(teacher_variables))
  rng = np.random.default_rng(batch_size)
  host_batch = {"image": rng.random((batch_size,) + example_shape, np.float32),
                "label": rng.integers(0, 10, batch_size).astype(np.int32)}
  batch = engine.put_batch(host_batch)
  train_step = engine.compile_train(step_lib.make_train_step(
      student, teacher, methods.HintonKD(TEMPERATURE, ALPHA), tx))
  compiled = train_step.lower(state, teacher_variables, batch).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  box = {"state": state, "metrics": None}

  def run_steps(n):
    state, metrics = box["state"], None
    for _ in range(n):
      state, metrics = compiled(state, teacher_variables, batch)
    box["state"], box["metrics"] = state, metrics

  def sync():
    jax.block_until_ready((box["state"], box["metrics"]))

  run_steps(1)
  sync()
  first_loss = float(box["metrics"]["loss"])
  return run_steps, sync, xla_flops, first_loss, params, host_batch


# ---------------------------------------------------------------------------------------- torch


def make_torch(torch, device: str, params, host_batch):
  """The same step in eager PyTorch, from the same weights and batch; returns (run_steps, sync, first_loss)."""
  nn, functional = torch.nn, torch.nn.functional

  def mlp(dims, layer_params):
    layers = [nn.Flatten()]
    for k, (i, o) in enumerate(zip(dims[:-1], dims[1:])):
      linear = nn.Linear(i, o)
      with torch.no_grad():  # flax kernels are (in, out), torch weights (out, in)
        linear.weight.copy_(torch.from_numpy(layer_params[f"Dense_{k}"]["kernel"].T.copy()))
        linear.bias.copy_(torch.from_numpy(layer_params[f"Dense_{k}"]["bias"].copy()))
      layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1]).to(device)

  teacher = mlp(TEACHER, params["teacher"]).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  student = mlp(STUDENT, params["student"]).train()
  optimizer = torch.optim.Adam(student.parameters(), lr=LR)
  # NHWC images flatten in the same order as flax's reshape.
  images = torch.from_numpy(host_batch["image"]).to(device)
  labels = torch.from_numpy(host_batch["label"]).long().to(device)

  def hinton_kd(s, t, y):
    t_log = functional.log_softmax(t / TEMPERATURE, -1)
    s_log = functional.log_softmax(s / TEMPERATURE, -1)
    soft = TEMPERATURE**2 * torch.sum(t_log.exp() * (t_log - s_log), -1)
    return ((1 - ALPHA) * functional.cross_entropy(s, y, reduction="none") + ALPHA * soft).mean()

  box = {}

  def run_steps(n):
    for _ in range(n):
      with torch.no_grad():
        t = teacher(images)
      s = student(images)
      loss = hinton_kd(s, t, labels)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      with torch.no_grad():  # the same metrics as ours, left on the device
        s_arg = s.argmax(-1)
        box["metrics"] = (loss.detach(), (s_arg == labels).float().mean(), (s_arg == t.argmax(-1)).float().mean())

  def sync():
    if device.startswith("cuda"):
      torch.cuda.synchronize()

  run_steps(1)
  sync()
  return run_steps, sync, float(box["metrics"][0])


# ----------------------------------------------------------------------------------------- main


def main():
  args = parse_args()
  if args.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # before jax initialises its backends
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  if args.matmul_precision == "highest":
    jax.config.update("jax_default_matmul_precision", "highest")
  device = jax.devices(args.device)[0]
  machine = machine_description()
  threads = len(machine["affinity"])

  torch = torch_device = None
  if not args.no_torch:
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.set_num_threads(threads)
    torch_device = "cuda" if args.device == "gpu" and torch.cuda.is_available() else "cpu"
    if torch_device == "cuda":
      torch.backends.cuda.matmul.allow_tf32 = args.matmul_precision == "default"

  print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, affinity {machine['affinity']} "
        f"(os.sched_getaffinity)")
  if args.device == "cpu" and len(machine["affinity"]) == machine["cpu_count"] and machine["cpu_count"] > 2:
    print("  tip: pin the run, e.g. `taskset -c 0,1 python benchmarks/distill_step.py`")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} ({device}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if torch is not None:
    print(f"torch {torch.__version__}, device {torch_device}, threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if torch_device == "cuda" else ""))
  print(f"matmul precision: {args.matmul_precision}; timings: median of {args.repeats} repeats "
        f"x {args.steps} steps (min in brackets)")

  peak_sizes = [int(n) for n in args.peak_sizes.split(",")]
  peak, peak_n = matmul_peak(jax, jnp, device, peak_sizes, repeats=3)
  print(f"matmul peak (jit jnp.dot f32, sizes {peak_sizes}): {peak:.1f} GFLOP/s at n={peak_n}", flush=True)

  rows = []
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    flops = step_flops(batch_size)
    run_ours, sync_ours, xla_flops, ours_loss, params, host_batch = make_ours(jax, device, batch_size)
    contenders = {"ours": (run_ours, sync_ours)}
    torch_loss = None
    if torch is not None:
      run_torch, sync_torch, torch_loss = make_torch(torch, torch_device, params, host_batch)
      contenders["torch"] = (run_torch, sync_torch)
    times = {name: [] for name in contenders}
    for name, (run, sync) in contenders.items():
      timed(run, sync, args.warmup)
    for _ in range(args.repeats):  # take turns, so both see the same background load
      for name, (run, sync) in contenders.items():
        times[name].append(timed(run, sync, args.steps))
    ours = statistics.median(times["ours"])
    row = {"batch": batch_size, "ours_ms": ours * 1e3, "ours_min_ms": min(times["ours"]) * 1e3,
           "gflops": flops / ours / 1e9, "flops": flops, "xla_flops": xla_flops}
    print(f"\nbatch {batch_size}: {flops / 1e9:.3f} GFLOP/step analytic (matmuls), "
          f"{xla_flops / 1e9:.3f} XLA cost_analysis (all ops)")
    print(f"  first-step loss: ours {ours_loss:.5f}" + (f", torch {torch_loss:.5f}" if torch_loss is not None else ""))
    print(f"  ours : {row['ours_ms']:8.2f} ms/step [{row['ours_min_ms']:.2f}]  {row['gflops']:7.1f} GFLOP/s")
    if "torch" in times:
      t = statistics.median(times["torch"])
      row.update(torch_ms=t * 1e3, torch_min_ms=min(times["torch"]) * 1e3, torch_gflops=flops / t / 1e9)
      print(f"  torch: {row['torch_ms']:8.2f} ms/step [{row['torch_min_ms']:.2f}]  {row['torch_gflops']:7.1f} GFLOP/s")
    print(f"  ours / matmul peak = {row['gflops'] / peak:.2f}   (goal >= 0.80)")
    if "torch" in times:
      print(f"  ours / torch = {row['ours_ms'] / row['torch_ms']:.2f}   (time; goal <= 0.90)")
    rows.append(row)

  print("\n| batch | ours ms/step | torch ms/step | ours GFLOP/s | ours / peak | ours / torch |")
  print("|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    torch_cols = (f"{r['torch_ms']:.2f}", f"{r['ours_ms'] / r['torch_ms']:.2f}") if "torch_ms" in r else ("-", "-")
    print(f"| {r['batch']} | {r['ours_ms']:.2f} | {torch_cols[0]} | {r['gflops']:.1f} | "
          f"{r['gflops'] / peak:.2f} | {torch_cols[1]} |")
  print(f"matmul peak {peak:.1f} GFLOP/s")


if __name__ == "__main__":
  main()
