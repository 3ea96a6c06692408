"""Language-model distillation: one token-level method covering SFT, supervised KD, GKD, MiniLLM-
style reverse KL and DistiLLM's skew KL with a replay buffer, chosen by config.method.

Per token t of a row (a target predicted from position t−1, research/data/text.py):

  loss = ce_weight · CE(next token) + kd_weight · D(student ‖ teacher)

where D is a divergence of research/losses/sequence.py at `temperature` (GKD: JSD(β); MiniLLM:
reverse KL; DistiLLM: skew KL(α)), averaged over every trained token of the GLOBAL batch, so any
device count computes the same loss. Whose tokens: with probability `on_policy_fraction` (GKD's λ)
a step replaces the batch's completions by the current student's samples from the same prompts
(on-policy); otherwise the dataset's text is used (supervised KD; sequence-level KD when that
text was written by the teacher, experiments/label_with_teacher.py). With `replay_size` > 0 an
on-policy step samples afresh only with probability `replay_fresh` and otherwise reuses a stored
global batch of earlier student samples (DistiLLM's off-policy replay, which saves generation
calls); the buffer lives in the train state's method_state and is checkpointed.

Simplifications, stated: "MiniLLM" here is the token-level reverse KL on the student's samples
(GKD's on-policy reverse KL), not MiniLLM's sequence-level policy gradient with its variance-
reduction tricks; DistiLLM's adaptive schedule of the on-policy probability (raised when the
validation loss rises) is a fixed `on_policy_fraction` here, with `replay_fresh` setting how often
the buffer is refreshed.
"""
import dataclasses

import jax.numpy as jnp
import ml_collections

from research.data import text
from research.errors import UserError
from research.losses import sequence

NAMES = ("supervised", "token_kd")
FIELDS = text.KEYS  # the token-row fields (research/data/text.py)


@dataclasses.dataclass(frozen=True)
class TokenDistillation:
  """The configured LM loss and its student-data policy (see the module docstring)."""
  name: str
  ce_weight: float
  kd_weight: float
  divergence: str
  temperature: float
  beta: float
  alpha: float
  chunk_size: int
  on_policy_fraction: float
  sample_temperature: float
  sample_top_k: int
  sample_top_p: float
  replay_size: int
  replay_fresh: float

  @property
  def needs_teacher(self) -> bool:
    return self.name != "supervised"

  def init_state(self, global_batch: int, seq_len: int) -> dict:
    """method_state: a count of student-generation calls (global batches sampled) and, with
    replay, the buffer of `replay_size` global batches of samples and how many are filled."""
    state = {"generations": jnp.zeros((), jnp.int32)}
    if self.replay_size:
      shape = (self.replay_size, global_batch, seq_len)
      state["buffer"] = {k: jnp.zeros(shape, jnp.float32 if k == "loss_mask" else jnp.int32)
                         for k in FIELDS}
      state["filled"] = jnp.zeros((), jnp.int32)
      state["next"] = jnp.zeros((), jnp.int32)
    return state

  def token_terms(self, student_logits, teacher_logits, tokens) -> dict:
    """Per-token loss terms on rows (B, L): {'ce': (B, L−1)[, 'kd': (B, L−1)]} for the targets
    tokens[:, 1:] predicted from logits[:, :-1]; masked positions are left to the caller."""
    terms = {}
    if self.ce_weight:
      terms["ce"] = sequence.next_token_nll(student_logits, tokens)
    if self.kd_weight:
      terms["kd"] = sequence.per_token(self.divergence, student_logits[:, :-1], teacher_logits[:, :-1],
                                       self.temperature, self.beta, self.alpha)
    return terms


def build(config: ml_collections.ConfigDict) -> TokenDistillation:
  """The LM method of config.method; bad values raise UserError naming the key."""
  if config.name not in NAMES:
    raise UserError(f"method '{config.name}' is a vision method; language models take one of: "
                    f"{', '.join(NAMES)} (token_kd: divergence, on_policy_fraction, replay_size).")
  for key in ("ce_weight", "kd_weight", "replay_size", "chunk_size", "sample_top_k"):
    if config[key] < 0:
      raise UserError(f"config.method.{key} must be ≥ 0, got {config[key]}.")
  for key in ("temperature", "sample_temperature"):
    if config[key] < 0 or (key == "temperature" and config[key] == 0):
      raise UserError(f"config.method.{key} must be > 0 (sample_temperature 0 = greedy), got {config[key]}.")
  for key, low, high in (("on_policy_fraction", 0, 1), ("replay_fresh", 0, 1), ("jsd_beta", 0, 1),
                         ("sample_top_p", 0, 1), ("skew_alpha", 0, 1)):
    if not low <= config[key] <= high or (key in ("sample_top_p", "replay_fresh") and config[key] == 0):
      raise UserError(f"config.method.{key}={config[key]} must lie in "
                      f"{'(0, 1]' if key in ('sample_top_p', 'replay_fresh') else '[0, 1]'}.")
  if config.name == "supervised" and (config.kd_weight or config.on_policy_fraction):
    raise UserError("method 'supervised' has no teacher: kd_weight and on_policy_fraction must be 0.")
  if config.name == "token_kd" and not config.kd_weight:
    raise UserError("method 'token_kd' has kd_weight=0, so the teacher would be unused; set "
                    "config.method.kd_weight (e.g. 1.0) or use method 'supervised'.")
  if config.chunk_size and config.ce_weight:
    raise UserError("config.method.chunk_size computes only the divergence in chunks; set ce_weight=0 "
                    "with it (or chunk_size=0).")
  if config.replay_size and not config.on_policy_fraction:
    raise UserError("config.method.replay_size stores the student's samples, but on_policy_fraction=0 "
                    "never samples; set on_policy_fraction > 0 or replay_size=0.")
  return TokenDistillation(
      config.name, config.ce_weight, config.kd_weight, config.divergence, config.temperature,
      config.jsd_beta, config.skew_alpha, config.chunk_size, config.on_policy_fraction,
      config.sample_temperature, config.sample_top_k, config.sample_top_p, config.replay_size,
      config.replay_fresh)
