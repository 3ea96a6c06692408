r"""How fast are the vision zoo's distill steps (issue 3): CIFAR ResNets against PyTorch, taps, CRD's banks.

One run measures, in one process, on the same cores and threads (everything in a part takes turns
within each round, and ratios are medians over rounds of the ratio within a round):

  part "step" (the CNN pair, default teacher resnet56 → student resnet20, CIFAR 32×32×3 random
  images, 100 classes, SGD momentum 0.9, lr 0.05, weight decay 5e-4):
    ours_kd       exactly the trainer's step: research.train.step.make_train_step(student, (teacher,),
                  hinton_kd (T 4, CE 0.1 + KD 0.9), optimizer.build(sgd)) through
                  parallel.ShardMapEngine([device]).compile_train (jit(shard_map), state donated),
                  the batch already on the device;
    torch_kd      the same step in eager PyTorch: the same BasicBlock ResNets (BN), teacher forward
                  under no_grad in eval mode, student in train mode, the same loss,
                  torch.optim.SGD(momentum 0.9, weight_decay 5e-4); from the same weights and batch,
                  so the first-step losses printed must agree;
    ours_at       the trainer's step with attention transfer added (method at: taps stage1..3 of both
    torch_at      models, feature_weight 1000, on top of CE 0.1 + KD 0.9), and the same in PyTorch;
    ours_unused   ours_kd's loss from a Method whose term asks for the stage1..3 taps of both models
                  but returns 0: what requesting taps costs by itself.
    Goals: ours / torch ≤ 0.90 (time); ours_at / ours_kd ≤ 1.05 (the cost of feature taps).
  part "crd": the trainer's CRD step (CE 1 + CRD 0.8, penultimate taps, 128-d, num_train 50,000)
    for each --crd_negatives, against its memory-bank update alone: the two
    research.losses.contrastive.memory_update calls on the (50,000, 128) banks with the batch's
    indices, jitted with the banks donated, as in the step. Goal: update ≤ 10 % of the step.
    Also the same step with a CRD term that leaves the banks as they were (no_update): the
    difference is what the update costs inside the step, copies XLA inserts included.

Run, pinned to two cores (both frameworks then use two threads; 4–10 minutes on a shared 2-core VM):
  pip install -e .[bench]
  taskset -c 0,1 python benchmarks/zoo_step.py
  taskset -c 0,1 python benchmarks/zoo_step.py --batch=128 --parts=step
On a busy machine PyTorch's OpenMP threads lose their cores far more than XLA's (one run's torch
step took 6 s, another's 0.7 s), so the ours/torch ratio is best read from one core, CPU time:
  taskset -c 0 python benchmarks/zoo_step.py --clock=process --parts=step
See benchmarks/README.md ("Vision zoo (issue 3)") for results.
"""
import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

# Run as a script from a checkout without `pip install -e .`: make the package importable.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill_step import load_average as _load, machine_description, trainer_steps, verdict  # noqa: E402  pylint: disable=wrong-import-position

TEMPERATURE, CE_WEIGHT, KD_WEIGHT, AT_WEIGHT = 4.0, 0.1, 0.9, 1000.0
STAGES = ("stage1", "stage2", "stage3")
OPTIMIZER = dict(name="sgd", lr=0.05, schedule="constant", momentum=0.9, weight_decay=5e-4)
EXAMPLE_SHAPE = (32, 32, 3)
CLOCK = [time.perf_counter]


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--batch", type=int, default=64, help="batch size (CRD's benchmark: 64)")
  parser.add_argument("--steps", type=int, default=2, help="steps per timing; each contender is timed once a round")
  parser.add_argument("--rounds", type=int, default=5, help="timed rounds (steps × rounds timed steps each)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--pair", default="resnet56,resnet20", help="teacher,student (names in research.models.CIFAR)")
  parser.add_argument("--crd_pair", default="", help="teacher,student of the CRD part ('' = --pair)")
  parser.add_argument("--crd_negatives", default="4096,16384", help="comma-separated K of the CRD steps")
  parser.add_argument("--num_train", type=int, default=50000, help="CRD's bank rows (CIFAR-100 train)")
  parser.add_argument("--num_classes", type=int, default=100)
  parser.add_argument("--parts", default="step,crd", help="comma-separated: step (ours/torch, taps), crd")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch contenders")
  parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                      help="process: CPU seconds of this process (use with one core, taskset -c 0)")
  parser.add_argument("--json", default="", help="also write the machine and the figures to this JSON file")
  return parser.parse_args()


# ------------------------------------------------------------------------------------------ ours


@dataclasses.dataclass(frozen=True)
class UnusedTaps:
  """A method term that requests feature taps of both models and ignores them (its value is 0)."""
  student_taps: tuple
  teacher_taps: tuple

  def check(self, student_shapes, teacher_shapes) -> None:
    del student_shapes, teacher_shapes

  def init(self, rng, student_shapes, teacher_shapes):
    del rng, student_shapes, teacher_shapes
    return {}, {}

  def __call__(self, adapters, state, student, teacher, context):
    del adapters, student, teacher, context
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    return jnp.zeros((), jnp.float32), state


class Pair:
  """The teacher and student linen models, their variables (same seeds in every variant) and a batch."""

  def __init__(self, jax, names: str, num_classes: int, batch_size: int, num_train: int):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from research import models  # pylint: disable=import-outside-toplevel
    from research.methods import taps  # pylint: disable=import-outside-toplevel
    from research.train.state import init_variables  # pylint: disable=import-outside-toplevel
    self.names = tuple(names.split(","))
    self.teacher, self.student = (models.CIFAR[n](num_classes) for n in self.names)
    t_key, s_key = jax.random.split(jax.random.PRNGKey(0))
    self.teacher_variables = jax.device_get(init_variables(self.teacher, EXAMPLE_SHAPE, t_key))
    self.student_variables = jax.device_get(init_variables(self.student, EXAMPLE_SHAPE, s_key))
    self.teacher_shapes = taps.available(self.teacher, self.teacher_variables, EXAMPLE_SHAPE)
    self.student_shapes = taps.available(self.student, self.student_variables, EXAMPLE_SHAPE)
    rng = np.random.default_rng(batch_size)
    self.batch = {"image": rng.standard_normal((batch_size,) + EXAMPLE_SHAPE).astype(np.float32),
                  "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
                  "index": rng.choice(num_train, batch_size, replace=False).astype(np.int32)}
    self.num_train = num_train


def make_ours(jax, device, pair: Pair, method_overrides: dict, term=None):
  """The trainer's step for `pair` and the method; returns (run_steps, sync, first metrics, method)."""
  from research import config as config_lib, methods  # pylint: disable=import-outside-toplevel
  from research.train import optimizer, parallel, step as step_lib  # pylint: disable=import-outside-toplevel
  from research.train.state import TrainState  # pylint: disable=import-outside-toplevel

  config = config_lib.build({"method": method_overrides, "optimizer": OPTIMIZER})
  method = methods.build(config.method, pair.student_shapes, pair.teacher_shapes, pair.num_train)
  if term is not None:
    method = dataclasses.replace(method, term=term)
  tx = optimizer.build(config.optimizer, total_steps=1000)
  init_key, state_key = jax.random.split(jax.random.PRNGKey(1))
  adapters, method_state = method.init(init_key, pair.student_shapes, pair.teacher_shapes)
  engine = parallel.ShardMapEngine([device])
  state = engine.put_replicated(jax.device_get(
      TrainState.create(pair.student_variables, tx, state_key, adapters, method_state)))
  teacher_variables = engine.put_replicated((pair.teacher_variables,))
  batch = engine.put_batch(pair.batch)
  train_step = engine.compile_train(step_lib.make_train_step(pair.student, (pair.teacher,), method, tx))
  run_steps, sync, box = trainer_steps(jax, train_step, state, teacher_variables, batch)

  run_steps(1)
  sync()
  return run_steps, sync, jax.device_get(box["metrics"]), method


def make_bank_update(jax, device, pair: Pair, dim: int, momentum: float):
  """CRD's two memory-bank updates alone, jitted with the banks donated; returns (run_steps, sync)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from research.losses import contrastive  # pylint: disable=import-outside-toplevel

  def update(banks, index, v_student, v_teacher):
    return (contrastive.memory_update(banks[0], index, v_student, momentum),
            contrastive.memory_update(banks[1], index, v_teacher, momentum))

  update = jax.jit(update, donate_argnums=(0,))
  keys = jax.random.split(jax.random.PRNGKey(2), 2)
  banks = jax.device_put(tuple(contrastive.init_memory(k, pair.num_train, dim) for k in keys), device)
  rng = np.random.default_rng(3)
  embed = lambda: contrastive.l2_normalize(rng.standard_normal((len(pair.batch["index"]), dim)).astype(np.float32))
  args = jax.device_put((pair.batch["index"], embed(), embed()), device)
  box = {"banks": banks}

  def run_steps(n):
    banks = box["banks"]
    for _ in range(n):
      banks = update(banks, *args)
    box["banks"] = banks

  def sync():
    jax.block_until_ready(box["banks"])

  run_steps(1)
  sync()
  return run_steps, sync


# ----------------------------------------------------------------------------------------- torch


def make_torch(torch, pair: Pair, with_at: bool):
  """ours' step in eager PyTorch from the same weights and batch; returns (run_steps, sync, first loss)."""
  from research.models.cifar_resnet import CifarResNet  # pylint: disable=import-outside-toplevel
  nn, functional = torch.nn, torch.nn.functional

  class BasicBlock(nn.Module):
    """conv3×3(stride)-BN-ReLU-conv3×3-BN + shortcut (1×1 conv-BN when the shape changes), ReLU."""

    def __init__(self, cin, cout, stride):
      super().__init__()
      self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(cout)
      self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(cout)
      self.shortcut = None
      if stride != 1 or cin != cout:
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
      y = self.bn2(self.conv2(functional.relu(self.bn1(self.conv1(x)))))
      return functional.relu((x if self.shortcut is None else self.shortcut(x)) + y)

  class ResNet(nn.Module):
    """RepDistiller's CIFAR ResNet: returns (logits, [stage1, stage2, stage3] post-ReLU)."""

    def __init__(self, depth, widths, num_classes):
      super().__init__()
      blocks = (depth - 2) // 6
      self.conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
      self.bn = nn.BatchNorm2d(widths[0])
      self.stages = nn.ModuleList()
      cin = widths[0]
      for stage, width in enumerate(widths[1:]):
        layers = []
        for block in range(blocks):
          layers.append(BasicBlock(cin, width, 2 if stage > 0 and block == 0 else 1))
          cin = width
        self.stages.append(nn.Sequential(*layers))
      self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
      x = functional.relu(self.bn(self.conv(x)))
      features = []
      for stage in self.stages:
        x = stage(x)
        features.append(x)
      return self.fc(torch.flatten(functional.adaptive_avg_pool2d(x, 1), 1)), features

  def port(model, variables):
    """Copies flax variables (NHWC kernels (kh, kw, in, out), BN scale/bias/mean/var) into `model`."""
    params, stats = variables["params"], variables["batch_stats"]
    t = lambda a: torch.from_numpy(a.copy())

    def bn(module, p, s):
      module.weight.copy_(t(p["scale"]))
      module.bias.copy_(t(p["bias"]))
      module.running_mean.copy_(t(s["mean"]))
      module.running_var.copy_(t(s["var"]))

    conv = lambda module, p: module.weight.copy_(t(p["kernel"].transpose(3, 2, 0, 1)))
    with torch.no_grad():
      conv(model.conv, params["Conv_0"])
      bn(model.bn, params["BatchNorm_0"], stats["BatchNorm_0"])
      blocks = [b for stage in model.stages for b in stage]
      for i, block in enumerate(blocks):
        p, s = params[f"BasicBlock_{i}"], stats[f"BasicBlock_{i}"]
        conv(block.conv1, p["Conv_0"])
        bn(block.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
        conv(block.conv2, p["Conv_1"])
        bn(block.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
        if block.shortcut is not None:
          conv(block.shortcut[0], p["Conv_2"])
          bn(block.shortcut[1], p["BatchNorm_2"], s["BatchNorm_2"])
      model.fc.weight.copy_(t(params["Dense_0"]["kernel"].T))
      model.fc.bias.copy_(t(params["Dense_0"]["bias"]))
    return model

  def build(module, variables):
    if not isinstance(module, CifarResNet):
      raise ValueError(f"the PyTorch comparison has CIFAR ResNets only, not {type(module).__name__}")
    return port(ResNet(module.depth, module.widths, module.num_classes), variables)

  teacher = build(pair.teacher, pair.teacher_variables).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  student = build(pair.student, pair.student_variables).train()
  optimizer = torch.optim.SGD(student.parameters(), lr=OPTIMIZER["lr"], momentum=OPTIMIZER["momentum"],
                              weight_decay=OPTIMIZER["weight_decay"])
  images = torch.from_numpy(pair.batch["image"]).permute(0, 3, 1, 2).contiguous()  # NHWC → NCHW
  labels = torch.from_numpy(pair.batch["label"]).long()

  def attention(f):  # RepDistiller's Attention: normalised channel mean of f², flattened
    return functional.normalize(f.pow(2).mean(1).view(f.size(0), -1))

  def loss_fn(s, t, s_features, t_features):
    t_log = functional.log_softmax(t / TEMPERATURE, -1)
    s_log = functional.log_softmax(s / TEMPERATURE, -1)
    kd = TEMPERATURE**2 * torch.sum(t_log.exp() * (t_log - s_log), -1).mean()
    loss = CE_WEIGHT * functional.cross_entropy(s, labels) + KD_WEIGHT * kd
    if with_at:
      loss = loss + AT_WEIGHT * sum((attention(a) - attention(b)).pow(2).mean()
                                    for a, b in zip(s_features, t_features))
    return loss

  box = {}

  def run_steps(n):
    for _ in range(n):
      with torch.no_grad():
        t, t_features = teacher(images)
      s, s_features = student(images)
      loss = loss_fn(s, t, s_features, t_features)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      with torch.no_grad():  # the same metrics as ours
        s_arg = s.argmax(-1)
        box["metrics"] = (loss.detach(), (s_arg == labels).float().mean(), (s_arg == t.argmax(-1)).float().mean())

  run_steps(1)
  return run_steps, lambda: None, float(box["metrics"][0])


# ---------------------------------------------------------------------------------------- timing


def timed(run_steps, sync, steps: int) -> float:
  """Seconds per step of `steps` back-to-back steps, waiting for the device at the end."""
  start = CLOCK[0]()
  run_steps(steps)
  sync()
  return (CLOCK[0]() - start) / steps


def take_turns(contenders: dict, args) -> dict:
  """{name: [seconds per step, one per round]}: every contender warmed up, then timed once a round.

  A contender is (run_steps, sync, steps per timing)."""
  for run, sync, _ in contenders.values():
    if args.warmup:
      timed(run, sync, args.warmup)
  times = {name: [] for name in contenders}
  names = list(contenders)
  for r in range(args.rounds):  # the order rotates, so no contender always follows the same one
    for name in names[r % len(names):] + names[:r % len(names)]:
      run, sync, steps = contenders[name]
      times[name].append(timed(run, sync, steps))
  return times


def ratio(times: dict, num: str, den: str) -> float:
  """Median over rounds of num / den within a round."""
  return statistics.median(a / b for a, b in zip(times[num], times[den]))


def best_ratio(times: dict, num: str, den: str) -> str:
  """The fastest rounds' ratio, printed beside the median: on a loaded machine the fastest round
  is the one least disturbed, and PyTorch's OpenMP threads are disturbed far more than XLA's."""
  return f"[fastest/fastest {min(times[num]) / min(times[den]):.2f}]"


def print_times(times: dict, rows: dict) -> None:
  for name, ts in times.items():
    rows[f"{name}_ms"], rows[f"{name}_min_ms"] = statistics.median(ts) * 1e3, min(ts) * 1e3
    print(f"  {name:14s} {rows[f'{name}_ms']:9.2f} ms/step [{rows[f'{name}_min_ms']:.2f}]")


# ----------------------------------------------------------------------------------------- parts


def part_step(args, jax, device, torch) -> dict:
  """Part 1 and 2: ours vs torch (KD, AT+KD) and the cost of taps, all taking turns."""
  from research.models.cifar_resnet import CifarResNet  # pylint: disable=import-outside-toplevel
  pair = Pair(jax, args.pair, args.num_classes, args.batch, args.num_train)
  kd = dict(name="hinton_kd", temperature=TEMPERATURE, ce_weight=CE_WEIGHT, kd_weight=KD_WEIGHT)
  at = dict(kd, name="at", feature_weight=AT_WEIGHT, student_taps=STAGES, teacher_taps=STAGES)
  print(f"\n[step] teacher {pair.names[0]} -> student {pair.names[1]}, batch {args.batch}, "
        f"{args.num_classes} classes, SGD momentum 0.9 lr 0.05 wd 5e-4; compiling ...", flush=True)
  contenders, first = {}, {}
  start = time.perf_counter()
  run, sync, metrics, _ = make_ours(jax, device, pair, kd)
  contenders["ours_kd"], first["ours_kd"] = (run, sync, args.steps), float(metrics["loss"])
  run, sync, metrics, at_method = make_ours(jax, device, pair, at)
  contenders["ours_at"], first["ours_at"] = (run, sync, args.steps), float(metrics["loss"])
  run, sync, metrics, _ = make_ours(jax, device, pair, at,
                                    term=UnusedTaps(at_method.student_taps, at_method.teacher_taps))
  contenders["ours_unused"], first["ours_unused"] = (run, sync, args.steps), float(metrics["loss"])
  print(f"  compiled 3 steps (ours) in {time.perf_counter() - start:.0f} s", flush=True)
  if torch is not None and not all(isinstance(m, CifarResNet) for m in (pair.teacher, pair.student)):
    print("  no PyTorch contenders: its ResNet here mirrors research.models.cifar_resnet.CifarResNet only")
    torch = None
  if torch is not None:
    for name, with_at in (("torch_kd", False), ("torch_at", True)):
      run, sync, first[name] = make_torch(torch, pair, with_at)
      contenders[name] = (run, sync, args.steps)
  print("  first-step loss: " + ", ".join(f"{k} {v:.5f}" for k, v in first.items()), flush=True)
  times = take_turns(contenders, args)
  row = {"pair": args.pair, "batch": args.batch, "first_loss": first}
  print_times(times, row)
  if torch is not None:
    for method in ("kd", "at"):
      value = row[f"ours_over_torch_{method}"] = ratio(times, f"ours_{method}", f"torch_{method}")
      print(f"  ours / torch ({'hinton_kd' if method == 'kd' else 'at + kd'}) = {value:.2f}   "
            f"(time; goal <= 0.90: {verdict(value, 0.90)}) {best_ratio(times, f'ours_{method}', f'torch_{method}')}")
  value = row["at_over_kd"] = ratio(times, "ours_at", "ours_kd")
  print(f"  ours_at / ours_kd (taps stage1..3 + AT term) = {value:.3f}   (goal <= 1.05: {verdict(value, 1.05)}) "
        f"{best_ratio(times, 'ours_at', 'ours_kd')}")
  value = row["unused_over_kd"] = ratio(times, "ours_unused", "ours_kd")
  print(f"  ours_unused / ours_kd (taps requested, unused; the same XLA program as ours_kd but one "
        f"metric, so this shows the noise) = {value:.3f}   (goal <= 1.05: {verdict(value, 1.05)}) "
        f"{best_ratio(times, 'ours_unused', 'ours_kd')}", flush=True)
  return row


def part_crd(args, jax, device) -> dict:
  """Part 3: the CRD step for each K against its memory-bank update alone, and against the same step
  without the update (the update's cost inside the step, where XLA may copy the donated banks)."""
  from research.methods.crd import Contrastive  # pylint: disable=import-outside-toplevel

  @dataclasses.dataclass(frozen=True)
  class NoBankUpdate(Contrastive):
    """CRD's term with the banks left as they were (the step's loss and gradients are unchanged)."""

    def __call__(self, adapters, state, student, teacher, context):
      loss, new_state = super().__call__(adapters, state, student, teacher, context)
      return loss, {**new_state, "memory_student": state["memory_student"], "memory_teacher": state["memory_teacher"]}

  names = args.crd_pair or args.pair
  pair = Pair(jax, names, args.num_classes, args.batch, args.num_train)
  negatives = [int(k) for k in args.crd_negatives.split(",")]
  base = dict(name="crd", ce_weight=1.0, feature_weight=0.8, crd_dim=128, crd_temperature=0.07, crd_momentum=0.5)
  print(f"\n[crd] teacher {pair.names[0]} -> student {pair.names[1]}, batch {args.batch}, num_train "
        f"{args.num_train}, 128-d, K = {negatives}, CE 1 + CRD 0.8; compiling ...", flush=True)
  contenders = {}
  start = time.perf_counter()
  for k in negatives:
    run, sync, _, method = make_ours(jax, device, pair, dict(base, crd_negatives=k))
    contenders[f"crd_step_K{k}"] = (run, sync, args.steps)
    term = NoBankUpdate(**{f.name: getattr(method.term, f.name) for f in dataclasses.fields(method.term)})
    run, sync, _, _ = make_ours(jax, device, pair, dict(base, crd_negatives=k), term=term)
    contenders[f"no_update_K{k}"] = (run, sync, args.steps)
  run, sync = make_bank_update(jax, device, pair, method.term.dim, method.term.momentum)
  contenders["bank_update"] = (run, sync, max(args.steps, 50))  # ~0.1 ms a call: time enough of them
  print(f"  compiled {2 * len(negatives) + 1} functions in {time.perf_counter() - start:.0f} s", flush=True)
  times = take_turns(contenders, args)
  row = {"pair": names, "batch": args.batch, "num_train": args.num_train}
  print_times(times, row)
  for k in negatives:
    step, no_update = times[f"crd_step_K{k}"], times[f"no_update_K{k}"]
    value = row[f"update_over_step_K{k}"] = ratio(times, "bank_update", f"crd_step_K{k}")
    print(f"  bank_update / crd_step (K={k}) = {value:.4f}   (goal <= 0.10: {verdict(value, 0.10)})")
    value = row[f"in_step_update_over_step_K{k}"] = statistics.median((a - b) / a for a, b in zip(step, no_update))
    print(f"  (crd_step - no_update) / crd_step (K={k}) = {value:.3f}   (the update inside the step; "
          f"goal <= 0.10: {verdict(value, 0.10)})", flush=True)
  return row


def main():
  args = parse_args()
  if args.clock == "process":
    CLOCK[0] = time.process_time
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  import jax  # pylint: disable=import-outside-toplevel
  import flax  # pylint: disable=import-outside-toplevel
  device = jax.devices()[0]
  machine = machine_description()
  torch = None
  parts = args.parts.split(",")
  if not args.no_torch and "step" in parts:
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.set_num_threads(len(machine["affinity"]))
  print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, affinity {machine['affinity']} "
        f"(os.sched_getaffinity); load average {_load()} (other processes distort CPU timings)")
  print(f"jax {jax.__version__} (flax {flax.__version__}), backend {jax.default_backend()}, {device}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if torch is not None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, mkldnn "
          f"{torch.backends.mkldnn.is_available()}")
  print(f"{args.clock} clock; times: median of {args.rounds} rounds x {args.steps} steps [fastest round], "
        "contenders of a part take turns every round; ratios: median of the per-round ratio", flush=True)
  rows = {}
  start = time.perf_counter()
  if "step" in parts:
    rows["step"] = part_step(args, jax, device, torch)
  if "crd" in parts:
    rows["crd"] = part_crd(args, jax, device)
  print(f"\nload average at the end: {_load()}; total {time.perf_counter() - start:.0f} s")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"machine": machine, "jax": jax.__version__, "torch": None if torch is None else torch.__version__,
                 "args": vars(args), "date": time.strftime("%Y-%m-%d"), "load_average_end": _load(),
                 "rows": rows}, f, indent=2)


if __name__ == "__main__":
  main()
