"""The config schema: every key a run understands, with its default and type.

Experiment configs are ordinary `ml_collections.ConfigDict`s that set some of these keys.
`resolve(config)` merges them over the defaults and rejects unknown keys and wrong types,
so a typo fails at start-up instead of being silently ignored.
"""
from __future__ import annotations

from typing import Any

import ml_collections

from research.errors import UserError
from research.losses import sequence


def model_defaults() -> ml_collections.ConfigDict:
  """A model: `name` picks the architecture, the rest are its hyper-parameters."""
  return ml_collections.ConfigDict(dict(
      name="mlp",            # mlp | cnn | resnet | decoder | a CIFAR-family name (research/models: NAMES)
      widths=(1200, 1200),   # mlp hidden widths; cnn/resnet channels per stage (CIFAR family: fixed)
      num_classes=10,
      dropout_input=0.0,     # mlp only
      dropout_hidden=0.0,
      blocks_per_stage=1,    # resnet: residual blocks per stage; cnn: convs per stage
      # decoder (Llama-style LM, research/models/decoder.py):
      vocab_size=0,          # 0 = the dataset tokenizer's vocabulary; more (padding) is allowed
      dim=64,
      depth=2,
      num_heads=4,
      num_kv_heads=4,        # < num_heads: grouped-query attention
      mlp_dim=256,           # SwiGLU hidden width
      tie_embeddings=False,
  ))


def method_defaults() -> ml_collections.ConfigDict:
  """The loss: ce_weight·CE + kd_weight·T²·KL + feature_weight·(the method's own term)
  [+ triplet_weight·triplet]. Taps name the features a method compares (research/methods/taps.py).
  """
  return ml_collections.ConfigDict(dict(
      name="supervised",     # supervised | hinton_kd | fitnets | at | rkd | pkt | sp | crd | dkd
                             # | token_kd (LMs) | topk_kd | sampled_kd (teacher caches, both)
                             # | grpo (LMs, outcome-reward RL, no teacher)
      ce_weight=1.0,         # hard-label cross-entropy
      kd_weight=0.0,         # Hinton soft targets at `temperature` (scaled by T²)
      temperature=1.0,
      feature_weight=0.0,    # the method's own term (hint, AT, RKD, PKT, SP, CRD, DKD)
      student_taps=(),       # () = the method's default taps
      teacher_taps=(),
      adapter=True,          # fitnets: a trainable 1×1-conv / linear regressor student→teacher
      hint_steps=0,          # fitnets: steps of the hint stage (hint loss only) before CE + KD
      at_p=2.0,              # attention transfer exponent
      rkd_distance=25.0,     # RKD distance / angle weights inside the RKD term
      rkd_angle=50.0,
      crd_dim=128,           # CRD embedding size, negatives per example, NCE temperature,
      crd_negatives=16384,   # memory-bank momentum
      crd_temperature=0.07,
      crd_momentum=0.5,
      dkd_alpha=1.0,         # DKD: TCKD and NCKD weights, linear warm-up of the DKD term
      dkd_beta=8.0,
      dkd_warmup_steps=0,
      triplet_weight=0.0,    # batch-hard triplet loss on the logits used as an embedding
      triplet_margin=0.2,
      mixup=0.0,             # mixup ratio ~ Beta(mixup, mixup), one per step; 0 = off (Beyer: 1.0)
      # Language models (method token_kd): kd_weight · divergence(student ‖ teacher) per token.
      divergence="forward_kl",   # forward_kl | reverse_kl | jsd | skew_forward_kl | skew_reverse_kl | tvd
      jsd_beta=0.5,              # GKD's generalised JSD(β); 0 / 1 are the forward / reverse KL ends
      skew_alpha=0.1,            # DistiLLM's skew α
      chunk_size=0,              # > 0: the divergence in chunks of this many tokens (memory); 0 = whole
      on_policy_fraction=0.0,    # GKD's λ: probability that a step's completions are the student's samples
      sample_temperature=1.0,    # the student's sampling (on-policy steps)
      sample_top_k=0,
      sample_top_p=1.0,
      replay_size=0,             # DistiLLM: student samples kept, in global batches; 0 = always fresh
      replay_fresh=1.0,          # probability that an on-policy step samples afresh (else replays)
      group_size=8,              # grpo: completions sampled per prompt (the group of its baseline)
  ))


def defaults() -> ml_collections.ConfigDict:
  """Every key a run understands. Durations are in steps or epochs; the trainer resolves them."""
  return ml_collections.ConfigDict(dict(
      seed=0,
      dataset=dict(
          name="mnist5k",          # TFDS name; offline builders: mnist5k, digits, fashion_mnist
          data_dir="",             # '' = $TFDS_DATA_DIR or ~/tensorflow_datasets
          train_split="train",
          eval_split="test",
          exclude_labels=(),       # train on a transfer set without these classes (Hinton's omitted 3)
          translate_px=0,          # random +-px translation of training images (Hinton's jitter)
          hflip=False,             # random horizontal flips of training images (CIFAR recipes)
          in_memory=True,          # decode the whole split once; set False for large datasets
          download=True,           # allow TFDS to download a dataset that is not prepared
          # text datasets (research/data/text.py):
          tokenizer="byte",        # byte | path to a `tokenizers` tokenizer.json
          seq_len=128,             # tokens per row
          prompt_len=0,            # > 0: prompt/completion rows, the prompt left-padded to this width
          overflow="error",        # error | truncate: a prompt or completion longer than its columns
      ),
      batch_size=128,              # global, over all devices and hosts
      eval_batch_size=1000,
      num_epochs=1.0,
      num_steps=-1,                # > 0 overrides num_epochs
      model=model_defaults(),
      init_from="",                # workdir of a finished run whose variables start the student
                                   # (same architecture; e.g. an SFT warm start before on-policy KD)
      teacher=dict(
          checkpoint="",           # workdir (or its checkpoints/ folder) of a finished teacher run; '' = none
          model=model_defaults(),
          ensemble=(),             # more teacher workdirs (models read from their config.json):
                                   # the teacher becomes their average probability (hinton_kd only)
          view="same",             # same: the teacher sees the student's (augmented, mixed) images;
                                   # clean: the un-augmented images (Beyer et al.'s fixed teacher)
          cache="",                # name of a teacher cache (experiments/label_with_teacher.py): train on
                                   # its rows/views and signal with no teacher in memory; checkpoint,
                                   # if set, is then only checked against the cache's provenance
      ),
      method=method_defaults(),
      optimizer=dict(
          name="adam",             # adam | sgd
          lr=1e-3,
          schedule="cosine",       # cosine | constant | step
          decay_at=(),             # step: fractions of training where lr is multiplied by decay_factor
          decay_factor=0.1,        #   (CRD's 150/180/210 of 240 epochs = 0.625, 0.75, 0.875)
          warmup_steps=0,
          momentum=0.9,            # sgd only
          weight_decay=0.0,        # adam: decoupled (AdamW); sgd: added to the gradient (PyTorch SGD)
          grad_clip_norm=0.0,      # 0 = off
      ),
      parallel=dict(
          mode="shard_map",        # shard_map | pmap  (same per-device step)
          num_devices=-1,          # -1 = all local devices
      ),
      log_every_steps=50,
      eval_every_steps=-1,         # -1 = at the end of each epoch
      checkpoint_every_steps=1000, # and always at the last step; -1 = at the end of each epoch
      keep_checkpoints=3,
  ))


def build(overrides: ml_collections.ConfigDict | dict) -> ml_collections.ConfigDict:
  """The complete config: defaults overridden by `overrides`. Experiment `get_config`s return this,
  so every key can be overridden from the command line. Unknown keys or wrong types raise UserError.
  """
  merged = defaults()
  _merge(merged, overrides, path="config")
  return merged


def resolve(config: ml_collections.ConfigDict | dict) -> ml_collections.FrozenConfigDict:
  """Validates a (possibly partial) config and returns it complete and frozen."""
  merged = build(config)
  _check_values(merged)
  return ml_collections.FrozenConfigDict(merged)


def _merge(base: ml_collections.ConfigDict, update: Any, path: str) -> None:
  items = update.items() if hasattr(update, "items") else None
  if items is None:
    raise UserError(f"{path} must be a dict of settings, got {type(update).__name__}.")
  for key, value in items:
    where = f"{path}.{key}"
    if key not in base:
      known = ", ".join(sorted(base.keys()))
      raise UserError(f"Unknown config key '{where}'. Known keys here: {known}.")
    default = base[key]
    if isinstance(default, ml_collections.ConfigDict):
      _merge(default, value, where)
    else:
      base[key] = _coerce(value, default, where)


def _coerce(value: Any, default: Any, where: str) -> Any:
  """Accepts the default's type (ints for floats, lists for tuples); rejects the rest."""
  if isinstance(default, bool):
    ok = isinstance(value, bool)
  elif isinstance(default, int):
    ok = isinstance(value, int) and not isinstance(value, bool)
  elif isinstance(default, float):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    value = float(value) if ok else value
  elif isinstance(default, str):
    ok = isinstance(value, str)
  elif isinstance(default, tuple):
    ok = isinstance(value, (tuple, list))
    value = tuple(value) if ok else value
  else:
    ok = True
  if not ok:
    raise UserError(f"Config key '{where}' must be {type(default).__name__} "
                    f"(default {default!r}), got {type(value).__name__} {value!r}.")
  return value


METHOD_NAMES = ("supervised", "hinton_kd", "fitnets", "at", "rkd", "pkt", "sp", "crd", "dkd", "token_kd",
                "topk_kd", "sampled_kd", "grpo")
TEACHERLESS = ("supervised", "grpo")  # methods that train without a teacher
DIVERGENCES = sequence.NAMES

_CHOICES = {
    "method.name": METHOD_NAMES,
    "teacher.view": ("same", "clean"),
    "optimizer.name": ("adam", "sgd"),
    "optimizer.schedule": ("cosine", "constant", "step"),
    "parallel.mode": ("shard_map", "pmap"),
    "method.divergence": DIVERGENCES,
    "dataset.overflow": ("error", "truncate"),
}


def _check_values(config: ml_collections.ConfigDict) -> None:
  for dotted, choices in _CHOICES.items():
    section, key = dotted.split(".")
    if config[section][key] not in choices:
      raise UserError(f"config.{dotted}={config[section][key]!r} is not one of {choices}.")
  if config.batch_size <= 0 or config.eval_batch_size <= 0:
    raise UserError("config.batch_size and config.eval_batch_size must be positive.")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise UserError("Set config.num_epochs > 0 or config.num_steps > 0.")
  if config.method.name not in TEACHERLESS and not (config.teacher.checkpoint or config.teacher.cache):
    raise UserError(f"method '{config.method.name}' needs a teacher: set config.teacher.checkpoint to the "
                    "workdir of a trained teacher run, or config.teacher.cache to a teacher cache's name.")
  if config.method.name == "grpo" and config.dataset.prompt_len <= 0:
    raise UserError("method 'grpo' samples completions of prompts and rewards the dataset's completion, but "
                    "config.dataset.prompt_len=0 (plain text rows); set dataset.prompt_len > 0.")


def parse_arg(arg: str, **defaults) -> ml_collections.ConfigDict:
  """Parses a config-file argument like 'student_kd,small,seed=2' (big_vision style).

  Bare words set the boolean default of that name to True (or pick the value of the one
  string default named `run` when they match none); 'key=value' sets a default, keeping its type.
  Unknown words fail, listing what is accepted.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
  run_given = False
  for token in filter(None, (arg or "").split(",")):
    key, has_value, value = token.partition("=")
    if has_value:
      if key not in defaults:
        raise UserError(f"Unknown config argument '{key}'; accepted: {accepted}.")
      result[key] = _parse_value(key, value, defaults[key])
    elif isinstance(defaults.get(token), bool):
      result[token] = True
    elif "run" in defaults and not run_given:
      result.run, run_given = token, True
    else:
      raise UserError(f"Unknown config argument '{token}' (the run is already '{result.get('run')}'); "
                      f"accepted: {accepted}.")
  return result


def _parse_value(key: str, value: str, default):
  if isinstance(default, bool):
    if value.lower() not in ("true", "false", "1", "0"):
      raise UserError(f"Config argument {key}={value!r} must be true or false.")
    return value.lower() in ("true", "1")
  try:
    return type(default)(value)
  except ValueError as e:
    raise UserError(f"Config argument {key}={value!r} must be {type(default).__name__}.") from e
