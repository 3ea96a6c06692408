"""The optax optimizer a config asks for, with its learning-rate schedule."""
import ml_collections
import optax


def learning_rate(config: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """Linear warm-up for `warmup_steps`, then cosine decay to 0 at `total_steps` (or constant)."""
  warmup = min(config.warmup_steps, total_steps)
  if config.schedule == "constant":
    main = optax.constant_schedule(config.lr)
  else:
    main = optax.cosine_decay_schedule(config.lr, max(total_steps - warmup, 1))
  if not warmup:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, config.lr, warmup), main], [warmup])


def build(config: ml_collections.ConfigDict, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate(config, total_steps)
  if config.name == "adam":
    core = optax.adamw(schedule, weight_decay=config.weight_decay) if config.weight_decay else optax.adam(schedule)
  else:
    core = optax.chain(optax.add_decayed_weights(config.weight_decay) if config.weight_decay else optax.identity(),
                       optax.sgd(schedule, momentum=config.momentum))
  if config.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), core)
  return core
