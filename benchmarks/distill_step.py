r"""How fast is the Hinton MLP pair's distill step, against the matmul peak and against PyTorch?

One run measures, in the same process, on the same cores and threads:

  peak   the best f32 `jnp.dot` of square matrices under jit (GFLOP/s), the machine's matmul peak;
  ours   exactly the step the trainer runs: research.train.step.make_train_step(student, (teacher,),
         hinton_kd(T=20, CE 0.1 + KD 0.9), optax.adam(1e-3)) through ShardMapEngine.compile_train on one
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

Timings are medians over `--repeats` of `--steps` steps each, after warm-up. In every repeat ours,
torch and the peak's matmuls (every size) take turns, and the ratios printed are medians of the
ratios within a repeat, so that a machine shared with other work shifts all three together.
`--clock=process` with one core (`taskset -c 0`) times CPU seconds instead, the steadiest figure
on a busy machine.
See benchmarks/README.md for results.
"""
import argparse
import json
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
# Wall time, or this process's CPU time (--clock=process): on a shared machine a one-thread run
# (`taskset -c 0`) then counts only the time it actually ran, whatever else the machine does.
CLOCK = [time.perf_counter]


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch_sizes", default="128,512,1024", help="comma-separated batch sizes")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed repeat")
  parser.add_argument("--repeats", type=int, default=7, help="timed repeats; the median counts")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compilation")
  parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu",
                      help="JAX backend; torch uses cuda for gpu (if it has it), else cpu")
  parser.add_argument("--peak_sizes", default="512,1024,2048,4096", help="square matmul sizes for the peak")
  parser.add_argument("--matmul_precision", choices=("default", "highest"), default="default",
                      help="default: what the trainer runs (on GPU JAX's default is TF32, and torch is "
                      "then allowed TF32 too); highest: true f32 matmuls in both")
  parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                      help="process: CPU seconds of this process instead of wall time; use it with one "
                      "core (taskset -c 0) on a busy machine, where it approximates an idle machine's wall time")
  parser.add_argument("--json", default="", help="also write the machine and the figures to this JSON file")
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


def trainer_steps(jax, train_step, state, teacher_variables, batch):
  """(run_steps(n), sync(), box): n calls of the trainer's jitted step on one batch, as the trainer
  makes them (state donated and threaded through); box holds the latest state and metrics."""
  box = {"state": state, "metrics": None}

  def run_steps(n):
    state, metrics = box["state"], None
    for _ in range(n):
      state, metrics = train_step(state, teacher_variables, batch)
    box["state"], box["metrics"] = state, metrics

  def sync():
    jax.block_until_ready((box["state"], box["metrics"]))

  return run_steps, sync, box


def load_average() -> str:
  """The 1/5/15-minute load averages, to judge how shared the machine was during a run."""
  return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def verdict(value: float, goal: float) -> str:
  return "PASS" if value <= goal else "MISS"


def machine_description() -> dict:
  """CPU model (with family/model numbers and the vector units that matter), CPUs, affinity."""
  cpu = platform.processor() or "unknown"
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as f:
      info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines() if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    units = [u for u in ("avx2", "avx512f", "amx_bf16") if u in info.get("flags", "").split()]
    cpu = f"{info['model name']} (family {info.get('cpu family')} model {info.get('model')}, {' '.join(units)})"
  except (OSError, KeyError):
    pass
  affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))
  return {"cpu": cpu, "cpu_count": os.cpu_count(), "affinity": affinity}


def _load() -> str:
  return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def timed(run_steps, sync, steps: int) -> float:
  """Seconds per step of `steps` back-to-back steps, waiting for the device at the end."""
  start = CLOCK[0]()
  run_steps(steps)
  sync()
  return (CLOCK[0]() - start) / steps


# ------------------------------------------------------------------------------------------ JAX


def make_matmul(jax, jnp, device, n: int):
  """Returns measure() -> GFLOP/s of one timing of a jitted f32 (n, n) @ (n, n) on `device`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  dot = jax.jit(jnp.dot)
  rng = np.random.default_rng(n)
  a = jax.device_put(rng.standard_normal((n, n), np.float32), device)
  b = jax.device_put(rng.standard_normal((n, n), np.float32), device)
  dot(a, b).block_until_ready()
  reps = max(2, int(2e10 // (2 * n**3)))  # ~20 GFLOP per timing: long enough for a GPU too

  def measure() -> float:
    start = CLOCK[0]()
    for _ in range(reps):
      c = dot(a, b)
    c.block_until_ready()
    return 2 * n**3 * reps / (CLOCK[0]() - start) / 1e9

  return measure


def make_ours(jax, device, batch_size: int):
  """The trainer's step on one device.

  Returns (run_steps, sync, put_batch, xla_flops, first_loss, host params, host batch).
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  from research import config as config_lib, methods  # pylint: disable=import-outside-toplevel
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
  teacher_variables = engine.put_replicated(jax.device_get((teacher_variables,)))
  rng = np.random.default_rng(batch_size)
  host_batch = {"image": rng.random((batch_size,) + example_shape, np.float32),
                "label": rng.integers(0, 10, batch_size).astype(np.int32)}
  batch = engine.put_batch(host_batch)
  method = methods.build(config_lib.build({"method": dict(
      name="hinton_kd", temperature=TEMPERATURE, ce_weight=1 - ALPHA, kd_weight=ALPHA)}).method)
  train_step = engine.compile_train(step_lib.make_train_step(student, (teacher,), method, tx))
  cost = train_step.lower(state, teacher_variables, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  xla_flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

  run_steps, sync, box = trainer_steps(jax, train_step, state, teacher_variables, batch)

  def put_batch():  # what the trainer does with every host batch before the step
    return jax.block_until_ready(engine.put_batch(host_batch))

  run_steps(1)
  sync()
  first_loss = float(box["metrics"]["loss"])
  return run_steps, sync, put_batch, xla_flops, first_loss, params, host_batch


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


def measure_batch(args, jax, device, torch, torch_device, batch_size: int, measure_peak) -> tuple:
  """Times ours, torch and the matmuls in turns at one batch size, prints them; returns (row, peaks)."""
  flops = step_flops(batch_size)
  run_ours, sync_ours, put_batch, xla_flops, ours_loss, params, host_batch = make_ours(jax, device, batch_size)
  contenders = {"ours": (run_ours, sync_ours)}
  torch_loss = None
  if torch is not None:
    run_torch, sync_torch, torch_loss = make_torch(torch, torch_device, params, host_batch)
    contenders["torch"] = (run_torch, sync_torch)
  times = {name: [] for name in contenders}
  peaks = []
  for name, (run, sync) in contenders.items():
    timed(run, sync, args.warmup)
  # Take turns, so that all three see the same background load; ratios are taken per repeat.
  for _ in range(args.repeats):
    for name, (run, sync) in contenders.items():
      times[name].append(timed(run, sync, args.steps))
    peaks.append(measure_peak())
  matmul = [gflops for gflops, _ in peaks]
  put_ms = statistics.median(timed(lambda n: [put_batch() for _ in range(n)], lambda: None, args.steps)
                             for _ in range(args.repeats)) * 1e3
  row = {"batch": batch_size, "flops": flops, "xla_flops": xla_flops, "put_batch_ms": put_ms,
         "matmul_gflops": statistics.median(matmul),
         "ours_over_peak": statistics.median(flops / t / 1e9 / m for t, m in zip(times["ours"], matmul))}
  print(f"\nbatch {batch_size}: {flops / 1e9:.3f} GFLOP/step analytic (matmuls), "
        f"{xla_flops / 1e9:.3f} XLA cost_analysis (all ops)")
  print(f"  first-step loss: ours {ours_loss:.5f}" + (f", torch {torch_loss:.5f}" if torch_loss is not None else ""))
  for name, ts in times.items():
    row[f"{name}_ms"], row[f"{name}_min_ms"] = statistics.median(ts) * 1e3, min(ts) * 1e3
    row[f"{name}_gflops"] = flops / row[f"{name}_ms"] / 1e6
    print(f"  {name:6s}: {row[f'{name}_ms']:8.2f} ms/step [{row[f'{name}_min_ms']:.2f}]  "
          f"{row[f'{name}_gflops']:7.1f} GFLOP/s")
  print(f"  matmul: {row['matmul_gflops']:8.1f} GFLOP/s [{max(matmul):.1f}] (best size in each repeat)")
  print(f"  put_batch (host batch -> device, once per trainer step, not in the times above): {put_ms:.3f} ms")
  print(f"  ours / matmul peak = {row['ours_over_peak']:.2f}   (goal >= 0.80)")
  if "torch" in times:
    row["ours_over_torch"] = statistics.median(o / t for o, t in zip(times["ours"], times["torch"]))
    print(f"  ours / torch = {row['ours_over_torch']:.2f}   (time; goal <= 0.90)", flush=True)
  return row, peaks


# ----------------------------------------------------------------------------------------- main


def main():
  args = parse_args()
  if args.clock == "process":
    CLOCK[0] = time.process_time
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
        f"(os.sched_getaffinity); load average {_load()} (other processes distort CPU timings)")
  if args.device == "cpu" and len(machine["affinity"]) == machine["cpu_count"] and machine["cpu_count"] > 2:
    print("  tip: pin the run, e.g. `taskset -c 0,1 python benchmarks/distill_step.py`")
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, device {device.device_kind} ({device}); "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if torch is not None:
    print(f"torch {torch.__version__}, device {torch_device}, threads {torch.get_num_threads()}"
          + (f", {torch.cuda.get_device_name()}" if torch_device == "cuda" else ""))
  if args.clock == "process" and len(machine["affinity"]) > 1:
    print("  warning: --clock=process on several cores counts every thread's CPU time (spinning included)")
  print(f"matmul precision: {args.matmul_precision}; {args.clock} clock; timings: median of {args.repeats} repeats "
        f"x {args.steps} steps [fastest repeat]")

  peak_sizes = [int(n) for n in args.peak_sizes.split(",")]
  matmuls = {n: make_matmul(jax, jnp, device, n) for n in peak_sizes}

  def measure_peak() -> tuple:  # (GFLOP/s, n): the best size, timed once each
    return max((measure(), n) for n, measure in matmuls.items())

  peak = max(measure_peak() for _ in range(3))
  print(f"matmul peak (jit jnp.dot f32, sizes {peak_sizes}): {peak[0]:.1f} GFLOP/s at n={peak[1]}; "
        "all sizes are timed again in every repeat below", flush=True)

  rows = []
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    row, peaks = measure_batch(args, jax, device, torch, torch_device, batch_size, measure_peak)
    peak = max([peak] + peaks)
    rows.append(row)

  peak_gflops = peak[0]
  print("\n| batch | ours ms/step | torch ms/step | ours GFLOP/s | matmul GFLOP/s | ours / peak | ours / torch |")
  print("|---:|---:|---:|---:|---:|---:|---:|")
  for r in rows:
    torch_ms, ratio = (f"{r['torch_ms']:.2f}", f"{r['ours_over_torch']:.2f}") if "torch_ms" in r else ("-", "-")
    print(f"| {r['batch']} | {r['ours_ms']:.2f} | {torch_ms} | {r['ours_gflops']:.1f} | "
          f"{r['matmul_gflops']:.1f} | {r['ours_over_peak']:.2f} | {ratio} |")
  print(f"Times: medians over repeats [fastest repeat]. Ratios: medians over repeats of the ratio within a repeat "
        f"(the step(s) and the matmuls take turns). Best matmul seen: {peak_gflops:.1f} GFLOP/s at "
        f"n={peak[1]} (ours / that: " + ", ".join(f"{r['ours_gflops'] / peak_gflops:.2f}" for r in rows)
        + f"). Load average at the end: {_load()}.")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"machine": machine, "jax": jax.__version__, "device": str(device.device_kind),
                 "torch": None if torch is None else torch.__version__, "torch_device": torch_device,
                 "args": vars(args), "date": time.strftime("%Y-%m-%d"), "peak_gflops": peak_gflops,
                 "peak_n": peak[1], "load_average_end": _load(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
