"""The optax optimizer a config asks for, with its learning-rate schedule.

Schedules (config.optimizer.schedule), each after an optional linear warm-up from 0 over
`warmup_steps`:
  cosine    cosine decay from `lr` to 0 at `total_steps`;
  constant  `lr` throughout;
  step      `lr`, multiplied by `decay_factor` at each fraction in `decay_at` of `total_steps`
            (RepDistiller / mdistiller: ×0.1 at epochs 150, 180, 210 of 240 → (0.625, 0.75, 0.875)).
Step counts follow optax: update k (1-based) uses schedule(k − 1), so with boundary b = round(f·total)
the first b updates run at the higher rate, exactly as "decay after epoch 150" does when b = 150 epochs.
"""
import collections

import ml_collections
import optax

from research.errors import UserError


def check(config: ml_collections.ConfigDict) -> None:
  """Rejects schedule settings that cannot mean what the user wants (UserError naming the key)."""
  if config.warmup_steps < 0:
    raise UserError(f"config.optimizer.warmup_steps must be ≥ 0, got {config.warmup_steps}.")
  if config.schedule != "step":
    return  # decay_at / decay_factor belong to the step schedule only
  fractions = tuple(config.decay_at)
  if not fractions:
    raise UserError("config.optimizer.decay_at is empty, so schedule 'step' would never decay: give the "
                    "fractions of training where the lr drops, e.g. (0.625, 0.75, 0.875), or use "
                    "schedule 'constant'.")
  if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in fractions) \
      or any(a >= b for a, b in zip(fractions, fractions[1:])):
    raise UserError(f"config.optimizer.decay_at={fractions!r} must be fractions of training strictly "
                    "increasing inside (0, 1), e.g. (0.625, 0.75, 0.875) for epochs 150/180/210 of 240.")
  if config.decay_factor <= 0:
    raise UserError(f"config.optimizer.decay_factor must be > 0, got {config.decay_factor}.")


def step_boundaries(decay_at, total_steps: int) -> list:
  """The absolute steps round(f · total_steps) where the step schedule decays."""
  return [int(round(f * total_steps)) for f in decay_at]


def learning_rate(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up for `warmup_steps`, then the configured schedule (see the module docstring)."""
  check(config)
  warmup = min(config.warmup_steps, total_steps)
  if config.schedule == "constant":
    main = optax.constant_schedule(config.lr)
  elif config.schedule == "step":
    # Boundaries are absolute steps; after the warm-up the schedule counts from `warmup`, so shift them
    # (one inside the warm-up takes effect when it ends). Rounding can merge boundaries on a very
    # short run: their factors then multiply instead of one overwriting the other.
    scales = collections.Counter(b - warmup for b in step_boundaries(config.decay_at, total_steps))
    main = optax.piecewise_constant_schedule(
        config.lr, {b: config.decay_factor**n for b, n in scales.items()})
  else:
    main = optax.cosine_decay_schedule(config.lr, max(total_steps - warmup, 1))
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), main], [warmup])


def build(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  """Adam(W) or SGD with momentum, the schedule above, and optional global-norm gradient clipping.

  SGD's weight decay is added to the gradient before momentum, as torch.optim.SGD(weight_decay=…)
  does (the CIFAR benchmarks' recipe); Adam's is AdamW's decoupled decay.
  """
  schedule = learning_rate(config, total_steps)
  if config.name == "adam":
    core = optax.adamw(schedule, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(schedule)
  else:
    core = optax.chain(optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity(),
                       optax.sgd(schedule, momentum=config.momentum))
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), core)
  return core
