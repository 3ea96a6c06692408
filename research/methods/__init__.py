"""Distillation methods: one loss, composed of weighted terms, for the one trainer.

loss = ce_weight · CE(labels) + kd_weight · T²·KL(teacher ‖ student) + triplet_weight · triplet
       + feature_weight · (the method's own term: hint, AT, RKD, PKT, SP, CRD or DKD)

A method says which feature taps it needs from the student and the teacher (research/methods/taps.py),
owns its trainable adapters (regressors, embedding heads) and its state (CRD's memory banks), and
is checked against the models' taps at start-up, before anything is trained.
"""
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from research import config as config_lib
from research import losses
from research.errors import UserError
from research.losses import metric
from research.methods import taps as taps_lib
from research.methods.crd import Contrastive
from research.methods.dkd import DecoupledKD
from research.methods.hint import Hint
from research.methods.relational import Attention, Relational
from research.losses import sparse
from research.teachers import codec

_DEFAULT_TAPS = {"fitnets": "stage2", "rkd": "penultimate", "pkt": "penultimate", "crd": "penultimate"}


@dataclasses.dataclass(frozen=True)
class Method:
  """The configured loss. `term` is the method's own term, or None (supervised, hinton_kd)."""
  name: str
  ce_weight: float
  kd_weight: float
  temperature: float
  feature_weight: float
  triplet_weight: float
  triplet_margin: float
  hint_steps: int
  mixup: float
  term: Any = None

  @property
  def needs_teacher(self) -> bool:
    return self.name != "supervised"

  @property
  def student_taps(self) -> tuple:
    return tuple(self.term.student_taps) if self.term else ()

  @property
  def teacher_taps(self) -> tuple:
    return tuple(self.term.teacher_taps) if self.term else ()

  def init(self, rng, student_shapes: dict, teacher_shapes: dict):
    """(adapters, state) of the method: trainable adapter params and non-trainable state."""
    return self.term.init(rng, student_shapes, teacher_shapes) if self.term else ({}, {})

  def loss(self, adapters, state, student: dict, teacher, context: dict):
    """(scalar loss for this device's batch, new method state, per-term metrics).

    `student`/`teacher` map tap names (and "logits") to features; `context` holds 'labels',
    'mix' (mixup: (ratio, partner labels) or None), 'index', 'step', 'rng' and 'step_rng'.
    """
    logits, labels = student["logits"], context["labels"]
    terms = {}
    if self.ce_weight:
      ce = losses.cross_entropy(logits, labels)
      if context.get("mix") is not None:
        ratio, partner = context["mix"]
        ce = ratio * ce + (1 - ratio) * losses.cross_entropy(logits, partner)
      terms["ce"] = (self.ce_weight, jnp.mean(ce))
    if self.kd_weight:
      terms["kd"] = (self.kd_weight, jnp.mean(self._kd(logits, teacher, context)) * self.temperature**2)
    if self.triplet_weight:
      terms["triplet"] = (self.triplet_weight, metric.triplet_loss(logits, labels, self.triplet_margin))
    new_state = state
    if self.term is not None:
      value, new_state = self.term(adapters, state, student, teacher, context)
      terms[self.name] = (self.feature_weight, value)
    total = sum(w * v for w, v in terms.values())
    if self.hint_steps:  # FitNets stage 1: the hint alone, then the configured mix
      total = jnp.where(context["step"] < self.hint_steps, terms[self.name][1], total)
    return total, new_state, {name: v for name, (_, v) in terms.items()}


  def _kd(self, logits, teacher, context):
    """Per-example KL to the teacher at `temperature`, from whatever the teacher revealed: its
    logits (a model, or a level-logits cache), its top-k log-probs, or one sampled label."""
    signal = context.get("signal") or {}
    if self.name == "topk_kd":
      ids, log_probs = codec.decode_topk(signal["signal_topk"])
      return sparse.topk_kl(logits, ids, log_probs, self.temperature)
    if self.name == "sampled_kd":
      return sparse.sampled_kl(logits, context["labels"], signal["signal_log_prob"], self.temperature)
    return losses.kl_divergence(teacher["logits"], logits, self.temperature)


def build(config: ml_collections.ConfigDict, student_shapes: dict | None = None,
          teacher_shapes: dict | None = None, num_train: int = 0) -> Method:
  """The method of `config` (config.method), checked against the models' taps when given.

  `student_shapes`/`teacher_shapes` come from `taps.available`; `num_train` sizes CRD's banks.
  """
  _check_values(config)
  term = _term(config, student_shapes or {}, teacher_shapes or {}, num_train)
  if term is not None and student_shapes is not None:
    taps_lib.check(term.student_taps, student_shapes, "student")
    taps_lib.check(term.teacher_taps, teacher_shapes, "teacher")
    if len(term.student_taps) != len(term.teacher_taps):
      raise UserError(f"config.method.student_taps {term.student_taps} and teacher_taps "
                      f"{term.teacher_taps} must pair up one to one.")
    term.check(student_shapes, teacher_shapes)
  return Method(config.name, config.ce_weight, config.kd_weight, config.temperature,
                config.feature_weight, config.triplet_weight, config.triplet_margin,
                config.hint_steps if config.name == "fitnets" else 0, config.mixup, term)


def _term(config, student_shapes, teacher_shapes, num_train):
  name = config.name
  if name in ("supervised", "hinton_kd", "topk_kd", "sampled_kd"):
    return None
  if name == "dkd":
    return DecoupledKD(config.dkd_alpha, config.dkd_beta, config.temperature, config.dkd_warmup_steps)
  student_taps, teacher_taps = tuple(config.student_taps), tuple(config.teacher_taps)
  if name == "at":  # default: every stage both models have, in order (CRD's benchmark)
    stages = [t for t in taps_lib.stage_taps(student_shapes) if t in teacher_shapes]
    student_taps, teacher_taps = student_taps or tuple(stages), teacher_taps or tuple(stages)
    if student_shapes and not student_taps:
      raise UserError("method 'at' compares spatial feature maps, but the student and the teacher share "
                      f"no stage taps (student: {', '.join(student_shapes)}; teacher: "
                      f"{', '.join(teacher_shapes)}). Set config.method.student_taps / teacher_taps.")
    return Attention(student_taps, teacher_taps, config.at_p)
  if name == "sp":  # default: each model's last stage
    student_taps = student_taps or tuple(taps_lib.stage_taps(student_shapes)[-1:])
    teacher_taps = teacher_taps or tuple(taps_lib.stage_taps(teacher_shapes)[-1:])
  student_taps = student_taps or (_DEFAULT_TAPS.get(name, "penultimate"),)
  teacher_taps = teacher_taps or (_DEFAULT_TAPS.get(name, "penultimate"),)
  if name in ("fitnets", "rkd", "pkt", "sp", "crd") and (len(student_taps), len(teacher_taps)) != (1, 1):
    raise UserError(f"method '{name}' compares one tap pair; got student_taps={student_taps}, "
                    f"teacher_taps={teacher_taps}.")
  if name == "fitnets":
    return Hint(student_taps, teacher_taps, config.adapter)
  if name in ("rkd", "pkt", "sp"):
    return Relational(name, student_taps, teacher_taps, config.rkd_distance, config.rkd_angle)
  if num_train <= config.crd_negatives and student_shapes:
    raise UserError(f"config.method.crd_negatives={config.crd_negatives} must be below the "
                    f"{num_train} training examples; lower it.")
  return Contrastive(student_taps, teacher_taps, num_train, config.crd_dim, config.crd_negatives,
                     config.crd_temperature, config.crd_momentum)


NAMES = config_lib.METHOD_NAMES
LANGUAGE_ONLY = ("token_kd", "grpo")


def _check_values(config) -> None:
  if config.name not in NAMES:
    raise UserError(f"Unknown method.name={config.name!r}; choose one of: {', '.join(NAMES)}.")
  if config.name in LANGUAGE_ONLY:
    raise UserError(f"method '{config.name}' is for language models (token rows); image classifiers take "
                    f"one of: {', '.join(n for n in NAMES if n not in LANGUAGE_ONLY)}.")
  for key in ("ce_weight", "kd_weight", "feature_weight", "triplet_weight", "mixup", "hint_steps",
              "dkd_warmup_steps", "rkd_distance", "rkd_angle", "dkd_alpha", "dkd_beta"):
    if config[key] < 0:
      raise UserError(f"config.method.{key} must be ≥ 0, got {config[key]}.")
  for key in ("temperature", "crd_temperature", "crd_dim", "crd_negatives", "at_p"):
    if config[key] <= 0:
      raise UserError(f"config.method.{key} must be > 0, got {config[key]}.")
  if not 0 <= config.crd_momentum < 1:
    raise UserError(f"config.method.crd_momentum must be in [0, 1), got {config.crd_momentum}.")
  if config.name in ("fitnets", "at", "rkd", "pkt", "sp", "crd", "dkd") and not config.feature_weight \
      and not config.hint_steps:
    raise UserError(f"method '{config.name}' has feature_weight=0, so its own term would be off; set "
                    "config.method.feature_weight (e.g. AT 1000, FitNets 100, CRD 0.8, DKD 1) or use hinton_kd.")
  if config.name in ("topk_kd", "sampled_kd") and (not config.kd_weight or config.feature_weight):
    raise UserError(f"method '{config.name}' is kd_weight · KL to a cached teacher signal: set "
                    "config.method.kd_weight > 0 and feature_weight = 0.")
  if config.name == "supervised" and (config.kd_weight or config.feature_weight):
    raise UserError("method 'supervised' has no teacher: kd_weight and feature_weight must be 0.")


def ensemble_logits(teacher_logits: list, temperature: float) -> jnp.ndarray:
  """Logits whose softmax at `temperature` is the teachers' average softmax at `temperature`:
  T·log mean_i softmax(z_i / T). One teacher is returned unchanged."""
  if len(teacher_logits) == 1:
    return teacher_logits[0]
  log_probs = jnp.stack([jax.nn.log_softmax(z / temperature) for z in teacher_logits])
  return temperature * (jax.scipy.special.logsumexp(log_probs, axis=0) - jnp.log(len(teacher_logits)))
