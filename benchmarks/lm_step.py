r"""The LM distill step (issue 4): its FLOPs, its share of the matmul peak, and PyTorch eager's time.

A tiny Llama-style pair on one device: teacher DecoderLM(vocab 259, dim 256, depth 4, 4 heads,
2 kv heads, mlp 704), student (259, 128, 2, 4, 2, 352), seq 256, batch 16 (--teacher, --student,
--seq_len, --batch change them), method token_kd with divergence forward_kl, CE 0, KD 1, optax.adam.
`ours` is exactly the trainer's step: research.train.lm_step.make_train_step(student, teacher,
method, tx, prompt_len=0, pad_id=0, eos_id=2) through ShardMapEngine([device]).compile_train
(jit(shard_map), state donated), on a batch of the token layout (random tokens, segment 1,
positions 0..L-1, loss_mask 1 except column 0) already on the device.

Three goals, three parts:

  flops  XLA's cost_analysis() of the compiled step against tokens × (3·F_s + F_t), F =
         decoder.flops_per_token(..., context_length=L) (forward FLOPs per token; the attention
         forms the full L×L score matrix before masking, so L is the count): a forward and a
         backward (2×) pass through the student, a forward pass only through the teacher. Goal:
         within 5 %. Evidence that the teacher has no backward pass: the same figure if the
         teacher were differentiated is tokens × (3·F_s + 3·F_t); two local functions (NOT the
         trainer: jit(value_and_grad) of the same forward KL, written without stop_gradient)
         are compiled and counted too, one differentiating the student only (a control: it must
         land on the trainer's count) and one differentiating the teacher as well (it must land
         on the larger figure).
  peak   a jitted f32 (n, n) @ (n, n) (--peak_size, 2048) gives the machine's matmul FLOP/s;
         the step's FLOP/s = its cost_analysis FLOPs / its time. Goal: ≥ 50 % of the peak.
  torch  the same step in eager PyTorch: the same blocks (RMSNorm eps 1e-6, half-split RoPE,
         GQA, SwiGLU, untied unembedding) with the flax weights copied in, the teacher under
         no_grad, forward KL(p_t ‖ p_s) per token averaged over the trained tokens,
         torch.optim.Adam, plus the same argmax metrics. The first-step losses must agree within
         1e-4 relative (same maths). Goal: ours ≤ 0.9× torch's time. `torch_sdpa` is the same
         with F.scaled_dot_product_attention(is_causal=True), what a PyTorch user would write.

Run, pinned to two cores (both frameworks then use two threads):
  taskset -c 0,1 python benchmarks/lm_step.py
  taskset -c 0 python benchmarks/lm_step.py --clock=process      # one thread, CPU time (busy machine)
The step, torch and the peak matmul take turns every round (the order rotates); times are medians
over rounds [fastest round]; ratios are medians over rounds of the ratio within a round.
See benchmarks/README.md ("LM distillation step") for results.
"""
import argparse
import json
import os
import statistics
import sys
import time

# Run as a script from a checkout without `pip install -e .`: make the package importable.
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from distill_step import load_average, machine_description, trainer_steps, verdict  # noqa: E402  pylint: disable=wrong-import-position

FIELDS = ("vocab_size", "dim", "depth", "num_heads", "num_kv_heads", "mlp_dim")
PAD_ID, EOS_ID = 0, 2
CLOCK = [time.perf_counter]


def parse_args():
  parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
  parser.add_argument("--teacher", default="259,256,4,4,2,704", help="vocab,dim,depth,heads,kv_heads,mlp")
  parser.add_argument("--student", default="259,128,2,4,2,352", help="vocab,dim,depth,heads,kv_heads,mlp")
  parser.add_argument("--seq_len", type=int, default=256)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--lr", type=float, default=1e-3)
  parser.add_argument("--steps", type=int, default=2, help="steps per timing; each contender is timed once a round")
  parser.add_argument("--rounds", type=int, default=7, help="timed rounds; medians over them count")
  parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compilation")
  parser.add_argument("--peak_size", type=int, default=2048, help="n of the (n, n) @ (n, n) f32 peak matmul")
  parser.add_argument("--no_torch", action="store_true", help="skip the PyTorch contenders")
  parser.add_argument("--no_sdpa", action="store_true", help="skip the torch_sdpa contender")
  parser.add_argument("--clock", choices=("wall", "process"), default="wall",
                      help="process: CPU seconds of this process (use with one core, taskset -c 0)")
  parser.add_argument("--json", default="", help="also write the machine and the figures to this JSON file")
  return parser.parse_args()


def shape(text: str) -> dict:
  return dict(zip(FIELDS, (int(v) for v in text.split(","))))


def timed(run_steps, sync, steps: int) -> float:
  start = CLOCK[0]()
  run_steps(steps)
  sync()
  return (CLOCK[0]() - start) / steps


def cost_flops(compiled) -> float:
  """'flops' of compiled.cost_analysis(): a dict, or a list of one dict per program (older jax)."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


# ------------------------------------------------------------------------------------------ ours


class Setup:
  """The models, their host variables, the method, the optimizer and a host batch."""

  def __init__(self, jax, args):
    import numpy as np  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    import optax  # pylint: disable=import-outside-toplevel
    from research import config as config_lib  # pylint: disable=import-outside-toplevel
    from research.methods import lm  # pylint: disable=import-outside-toplevel
    from research.models.decoder import DecoderLM  # pylint: disable=import-outside-toplevel
    from research.train.state import init_variables  # pylint: disable=import-outside-toplevel
    self.t_shape, self.s_shape = shape(args.teacher), shape(args.student)
    self.teacher, self.student = DecoderLM(**self.t_shape), DecoderLM(**self.s_shape)
    self.length, self.batch_size = args.seq_len, args.batch
    t_key, s_key, self.state_key = jax.random.split(jax.random.PRNGKey(0), 3)
    example = (self.length,)
    self.teacher_variables = jax.device_get(init_variables(self.teacher, example, t_key, jnp.int32))
    self.student_variables = jax.device_get(init_variables(self.student, example, s_key, jnp.int32))
    self.method = lm.build(config_lib.build({"method": dict(
        name="token_kd", divergence="forward_kl", ce_weight=0.0, kd_weight=1.0, temperature=1.0)}).method)
    self.tx = optax.adam(args.lr)
    rng = np.random.default_rng(0)
    b, n = self.batch_size, self.length
    loss_mask = np.ones((b, n), np.float32)
    loss_mask[:, 0] = 0
    self.batch = {"tokens": rng.integers(3, self.t_shape["vocab_size"], (b, n)).astype(np.int32),
                  "segment_ids": np.ones((b, n), np.int32),
                  "positions": np.broadcast_to(np.arange(n, dtype=np.int32), (b, n)).copy(),
                  "loss_mask": loss_mask}


def make_ours(jax, device, setup: Setup):
  """The trainer's step; returns (run_steps, sync, first-step metrics, cost_analysis FLOPs)."""
  from research.train import lm_step, parallel  # pylint: disable=import-outside-toplevel
  from research.train.state import TrainState  # pylint: disable=import-outside-toplevel
  engine = parallel.ShardMapEngine([device])
  method_state = setup.method.init_state(setup.batch_size, setup.length)
  state = engine.put_replicated(jax.device_get(
      TrainState.create(setup.student_variables, setup.tx, setup.state_key, {}, method_state)))
  teacher_variables = engine.put_replicated((setup.teacher_variables,))
  batch = engine.put_batch(setup.batch)
  train_step = engine.compile_train(lm_step.make_train_step(
      setup.student, setup.teacher, setup.method, setup.tx, prompt_len=0, pad_id=PAD_ID, eos_id=EOS_ID))
  flops = cost_flops(train_step.lower(state, teacher_variables, batch).compile())
  run_steps, sync, box = trainer_steps(jax, train_step, state, teacher_variables, batch)
  run_steps(1)
  sync()
  return run_steps, sync, jax.device_get(box["metrics"]), flops


def local_flops(jax, setup: Setup, differentiate_teacher: bool) -> float:
  """cost_analysis FLOPs of a LOCAL function (not the trainer): jit(value_and_grad) of the same
  token-mean forward KL, written here without stop_gradient, with respect to the student's
  params and, if `differentiate_teacher`, the teacher's too; Adam updates the student. With the
  teacher held fixed it is a control that must match the trainer's count."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  b = setup.batch
  inputs = (b["tokens"], b["segment_ids"], b["positions"])
  mask = b["loss_mask"][:, 1:]

  def loss(s_params, t_params):
    s_logits = setup.student.apply({"params": s_params}, *inputs)[:, :-1]
    t_logits = setup.teacher.apply({"params": t_params}, *inputs)[:, :-1]
    log_ps, log_pt = jax.nn.log_softmax(s_logits, -1), jax.nn.log_softmax(t_logits, -1)
    kl = jnp.sum(jnp.exp(log_pt) * (log_pt - log_ps), -1)
    return jnp.sum(kl * mask) / jnp.sum(mask)

  def step(s_params, t_params, opt_state):
    if differentiate_teacher:
      value, (s_grads, t_grads) = jax.value_and_grad(loss, argnums=(0, 1))(s_params, t_params)
    else:
      value, s_grads = jax.value_and_grad(loss)(s_params, t_params)
      t_grads = None
    updates, opt_state = setup.tx.update(s_grads, opt_state, s_params)
    return optax.apply_updates(s_params, updates), opt_state, value, t_grads

  s_params, t_params = setup.student_variables["params"], setup.teacher_variables["params"]
  opt_state = setup.tx.init(s_params)
  return cost_flops(jax.jit(step).lower(s_params, t_params, opt_state).compile())


def make_matmul(jax, device, n: int):
  """Returns (run_steps, sync): run_steps(k) does k jitted f32 (n, n) @ (n, n) on `device`."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  dot = jax.jit(jnp.dot)
  rng = np.random.default_rng(n)
  a, b = (jax.device_put(rng.standard_normal((n, n), np.float32), device) for _ in range(2))
  box = {"c": dot(a, b)}

  def run_steps(k):
    for _ in range(k):
      box["c"] = dot(a, b)

  sync = lambda: box["c"].block_until_ready()
  sync()
  return run_steps, sync


# ----------------------------------------------------------------------------------------- torch


def make_torch(torch, setup: Setup, lr: float, sdpa: bool):
  """ours' step in eager PyTorch from the same weights and batch; returns (run_steps, sync, first loss)."""
  nn, functional = torch.nn, torch.nn.functional
  eps = 1e-6

  def linear(kernel):  # flax kernels are (in, out), torch weights (out, in)
    layer = nn.Linear(*kernel.shape, bias=False)
    with torch.no_grad():
      layer.weight.copy_(torch.from_numpy(kernel.T.copy()))
    return layer

  def norm_scale(scale):
    return nn.Parameter(torch.from_numpy(scale.copy()))

  def rope(x, cos, sin):  # x (B, H, L, D), half-split as research.models.decoder.rope
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  class Block(nn.Module):
    def __init__(self, p, heads, kv_heads):
      super().__init__()
      self.heads, self.kv_heads = heads, kv_heads
      a = p["Attention_0"]
      self.q, self.k, self.v, self.o = (linear(a[f"Dense_{i}"]["kernel"]) for i in range(4))
      self.w1, self.w3, self.w2 = (linear(p[f"Dense_{i}"]["kernel"]) for i in range(3))
      self.norm1, self.norm2 = norm_scale(p["RMSNorm_0"]["scale"]), norm_scale(p["RMSNorm_1"]["scale"])

    def forward(self, x, cos, sin, mask):
      batch, length, dim = x.shape
      hd = dim // self.heads
      y = functional.rms_norm(x, (dim,), self.norm1, eps)
      q = self.q(y).view(batch, length, self.heads, hd).transpose(1, 2)
      k = self.k(y).view(batch, length, self.kv_heads, hd).transpose(1, 2)
      v = self.v(y).view(batch, length, self.kv_heads, hd).transpose(1, 2)
      q, k = rope(q, cos, sin), rope(k, cos, sin)
      group = self.heads // self.kv_heads  # query head h reads kv head h // group
      k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
      if sdpa:
        out = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
      else:
        scores = (q @ k.transpose(-1, -2)) / hd**0.5
        scores = scores.masked_fill(~mask, torch.finfo(torch.float32).min)
        out = torch.softmax(scores, -1).masked_fill(~mask, 0) @ v
      x = x + self.o(out.transpose(1, 2).reshape(batch, length, dim))
      y = functional.rms_norm(x, (dim,), self.norm2, eps)
      return x + self.w2(functional.silu(self.w1(y)) * self.w3(y))

  class Decoder(nn.Module):
    def __init__(self, variables, shape_):
      super().__init__()
      p = variables["params"]
      self.embed = nn.Embedding.from_pretrained(torch.from_numpy(p["Embed_0"]["embedding"].copy()), freeze=False)
      self.blocks = nn.ModuleList(Block(p[f"Block_{i}"], shape_["num_heads"], shape_["num_kv_heads"])
                                  for i in range(shape_["depth"]))
      self.norm = norm_scale(p["RMSNorm_0"]["scale"])
      self.unembed = linear(p["Dense_0"]["kernel"])
      self.head_dim = shape_["dim"] // shape_["num_heads"]

    def forward(self, tokens, positions, segment_ids):
      half = self.head_dim // 2
      freq = 10000.0 ** (-torch.arange(half, dtype=torch.float32) * 2 / self.head_dim)
      angle = positions.float()[:, None, :, None] * freq  # (B, 1, L, D/2)
      cos, sin = torch.cos(angle), torch.sin(angle)
      length = tokens.shape[1]
      causal = torch.ones(length, length, dtype=torch.bool).tril()
      mask = (causal & (segment_ids[:, :, None] == segment_ids[:, None, :])
              & (segment_ids != 0)[:, None, :])[:, None]
      x = self.embed(tokens)
      for block in self.blocks:
        x = block(x, cos, sin, mask)
      return self.unembed(functional.rms_norm(x, (x.shape[-1],), self.norm, eps))

  teacher = Decoder(setup.teacher_variables, setup.t_shape).eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  student = Decoder(setup.student_variables, setup.s_shape).train()
  optimizer = torch.optim.Adam(student.parameters(), lr=lr)
  b = setup.batch
  tokens = torch.from_numpy(b["tokens"]).long()
  positions, segment_ids = torch.from_numpy(b["positions"]), torch.from_numpy(b["segment_ids"])
  mask = torch.from_numpy(b["loss_mask"][:, 1:])
  targets = tokens[:, 1:]
  box = {}

  def run_steps(n):
    for _ in range(n):
      with torch.no_grad():
        t_logits = teacher(tokens, positions, segment_ids)[:, :-1]
      s_logits = student(tokens, positions, segment_ids)[:, :-1]
      log_pt, log_ps = torch.log_softmax(t_logits, -1), torch.log_softmax(s_logits, -1)
      kl = torch.clamp(torch.sum(log_pt.exp() * (log_pt - log_ps), -1), min=0)  # KL(p_t ‖ p_s)
      loss = torch.sum(kl * mask) / mask.sum()
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      with torch.no_grad():  # the trainer's metrics: accuracy and agreement with the teacher
        predicted = s_logits.argmax(-1)
        box["metrics"] = (loss.detach(), ((predicted == targets) * mask).sum() / mask.sum(),
                          ((predicted == t_logits.argmax(-1)) * mask).sum() / mask.sum())

  run_steps(1)
  return run_steps, lambda: None, float(box["metrics"][0])


# ------------------------------------------------------------------------------------------ main


def part_flops(jax, setup: Setup, measured: float) -> dict:
  from research.models import decoder  # pylint: disable=import-outside-toplevel
  tokens = setup.batch_size * setup.length
  f_s = decoder.flops_per_token(**setup.s_shape, context_length=setup.length)
  f_t = decoder.flops_per_token(**setup.t_shape, context_length=setup.length)
  expected, with_teacher_grad = tokens * (3 * f_s + f_t), tokens * (3 * f_s + 3 * f_t)
  row = {"tokens": tokens, "F_student": f_s, "F_teacher": f_t, "xla_flops": measured,
         "expected": expected, "expected_if_teacher_differentiated": with_teacher_grad}
  row["measured_over_expected"] = measured / expected
  row["measured_over_teacher_differentiated"] = measured / with_teacher_grad
  print(f"\n[flops] tokens {tokens} (B {setup.batch_size} x L {setup.length}); forward FLOPs/token "
        f"F_s {f_s / 1e6:.3f} M, F_t {f_t / 1e6:.3f} M (decoder.flops_per_token, context_length=L)")
  print(f"  trainer step, XLA cost_analysis: {measured / 1e9:.3f} GFLOP")
  print(f"  expected tokens x (3 F_s + F_t)  = {expected / 1e9:.3f} GFLOP: measured / expected = "
        f"{row['measured_over_expected']:.4f}   (goal within 5 %: "
        f"{'PASS' if abs(row['measured_over_expected'] - 1) <= 0.05 else 'MISS'})")
  print(f"  if the teacher were differentiated, tokens x (3 F_s + 3 F_t) = {with_teacher_grad / 1e9:.3f} GFLOP: "
        f"measured / that = {row['measured_over_teacher_differentiated']:.4f}")
  for name, differentiate in (("local_student_grad", False), ("local_teacher_grad_too", True)):
    flops = row[name] = local_flops(jax, setup, differentiate)
    print(f"  LOCAL function (not the trainer) {name}: {flops / 1e9:.3f} GFLOP = "
          f"{flops / expected:.4f} x (3 F_s + F_t), {flops / with_teacher_grad:.4f} x (3 F_s + 3 F_t)")
  extra = row["local_teacher_grad_too"] - row["local_student_grad"]
  print(f"  teacher backward, as XLA counts it (difference of the two): {extra / 1e9:.3f} GFLOP = "
        f"{extra / (tokens * 2 * f_t):.4f} x tokens x 2 F_t; the trainer's step is "
        f"{measured / row['local_student_grad']:.4f} x the student-only local function", flush=True)
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
  threads = len(machine["affinity"])
  torch = None
  if not args.no_torch:
    import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
    torch.set_num_threads(threads)
  print(f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, affinity {machine['affinity']} "
        f"(os.sched_getaffinity); load average {load_average()} at the start (other processes distort timings)")
  print(f"jax {jax.__version__} (flax {flax.__version__}), backend {jax.default_backend()}, {device}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  if torch is not None:
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
  print(f"{args.clock} clock; times: median of {args.rounds} rounds x {args.steps} steps [fastest round]; "
        "contenders take turns every round; ratios: median of the per-round ratio", flush=True)

  start = time.perf_counter()
  setup = Setup(jax, args)
  print(f"teacher {setup.t_shape}, student {setup.s_shape}, seq {setup.length}, batch {setup.batch_size}, "
        f"token_kd forward_kl CE 0 KD 1, adam lr {args.lr}; compiling ...", flush=True)
  run, sync, metrics, measured = make_ours(jax, device, setup)
  rows = {"flops": part_flops(jax, setup, measured)}
  contenders = {"ours": (run, sync, args.steps)}
  first = {"ours": float(metrics["loss"])}
  if torch is not None:
    variants = (("torch", False),) + (() if args.no_sdpa else (("torch_sdpa", True),))
    for name, sdpa in variants:
      run_t, sync_t, first[name] = make_torch(torch, setup, args.lr, sdpa)
      contenders[name] = (run_t, sync_t, args.steps)
    for name in contenders:
      if name != "ours":
        rel = abs(first[name] - first["ours"]) / abs(first["ours"])
        rows[f"loss_rel_diff_{name}"] = rel
        print(f"  first-step loss: ours {first['ours']:.7f}, {name} {first[name]:.7f}, relative difference "
              f"{rel:.2e}   (goal <= 1e-4: {verdict(rel, 1e-4)})")
  n = args.peak_size
  run_m, sync_m = make_matmul(jax, device, n)
  contenders["matmul"] = (run_m, sync_m, 2)
  print(f"  set up in {time.perf_counter() - start:.0f} s; timing ...", flush=True)
  for run_c, sync_c, _ in contenders.values():
    timed(run_c, sync_c, args.warmup)
  times = {name: [] for name in contenders}
  names = list(contenders)
  for r in range(args.rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      run_c, sync_c, steps = contenders[name]
      times[name].append(timed(run_c, sync_c, steps))
    print(f"  round {r + 1}: " + ", ".join(f"{k} {v[-1] * 1e3:.0f} ms" for k, v in times.items())
          + f"; load {load_average()}", flush=True)

  matmul_flops = 2 * n**3
  step = {"first_loss": first}
  for name, ts in times.items():
    step[f"{name}_ms"], step[f"{name}_min_ms"] = statistics.median(ts) * 1e3, min(ts) * 1e3
  peaks = [matmul_flops / t for t in times["matmul"]]
  step["peak_gflops_median"], step["peak_gflops_best"] = statistics.median(peaks) / 1e9, max(peaks) / 1e9
  step["ours_gflops"] = measured / statistics.median(times["ours"]) / 1e9
  print("\n[time] ms per step, median [fastest round]:")
  for name in contenders:
    print(f"  {name:10s} {step[f'{name}_ms']:9.1f} [{step[f'{name}_min_ms']:.1f}]"
          + (f"   ({n}x{n} f32 jnp.dot)" if name == "matmul" else ""))
  value = step["ours_over_peak"] = statistics.median(
      (measured / a) / (matmul_flops / b) for a, b in zip(times["ours"], times["matmul"]))
  best = (measured / min(times["ours"])) / max(peaks)
  print(f"\n[peak] matmul {step['peak_gflops_median']:.1f} GFLOP/s (median; best {step['peak_gflops_best']:.1f}); "
        f"ours {step['ours_gflops']:.1f} GFLOP/s (cost_analysis FLOPs / median time)")
  print(f"  ours / peak = {value:.3f}   (goal >= 0.50: {'PASS' if value >= 0.5 else 'MISS'}) "
        f"[fastest/fastest {best:.3f}]")
  for name in contenders:
    if name.startswith("torch"):
      value = step[f"ours_over_{name}"] = statistics.median(a / b for a, b in zip(times["ours"], times[name]))
      print(f"  ours / {name} = {value:.3f}   (time; goal <= 0.90: {verdict(value, 0.90)}) "
            f"[fastest/fastest {min(times['ours']) / min(times[name]):.3f}]")
  rows["step"] = step
  print(f"\nload average at the end: {load_average()}; total {time.perf_counter() - start:.0f} s")
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"machine": machine, "jax": jax.__version__, "torch": None if torch is None else torch.__version__,
                 "args": vars(args), "date": time.strftime("%Y-%m-%d"), "load_average_end": load_average(),
                 "rows": rows, "times": times}, f, indent=2)


if __name__ == "__main__":
  main()
