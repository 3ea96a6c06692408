"""Language-model distillation: one token-level method covering SFT, supervised KD, GKD, MiniLLM-
style reverse KL and DistiLLM's skew KL with a replay buffer, chosen by config.method; and, as the
no-teacher baseline that distillation is compared with (DeepSeek-R1), outcome-reward RL ('grpo').

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

'grpo' (Shao et al. 2024's group-relative policy optimisation, as DeepSeek-R1 uses it) trains the
student alone on prompt/completion rows whose completion is the reference answer: per prompt it
samples `group_size` completions from the current student, rewards each 1 if it equals the
reference exactly (tokens and length, EOS included; `exact_match_reward`), takes the advantage
A = (r − group mean) / (group std + 1e-4) (`group_advantages`; population std, so an all-equal group
gives 0) and minimises −Σ_rows A_row · Σ_t log q(y_t) over the GLOBAL count of sampled tokens.
Simplifications, stated: one on-policy update per sample batch, so the PPO ratio is 1 and there is no
clipping; no KL penalty to a reference model; ce_weight and the teacher keys are unused.

From a teacher cache (config.teacher.cache, no teacher in memory) the teacher is what the cache's
access level revealed (research/teachers/signal.py): token_kd reads level-logits log-probs;
topk_kd is the KL over the top-k tokens plus a tail bucket (forward, or reverse with
divergence='reverse_kl'); sampled_kd the KL on {sampled token, rest} with the teacher's reported log-prob;
'supervised' on teacher-written text is sequence-level KD.
"""
import dataclasses

import jax.numpy as jnp
import ml_collections

from research.data import text
from research.errors import UserError
from research.losses import sequence, sparse
from research.teachers import codec

NAMES = ("supervised", "token_kd", "topk_kd", "sampled_kd", "grpo")
TEACHERLESS = ("supervised", "grpo")
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
  group_size: int = 8

  @property
  def needs_teacher(self) -> bool:
    return self.name not in TEACHERLESS

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

  def token_terms(self, student_logits, teacher_logits, tokens, signal=None) -> dict:
    """Per-token loss terms on rows (B, L): {'ce': (B, L−1)[, 'kd': (B, L−1)]} for the targets
    tokens[:, 1:] predicted from logits[:, :-1]; masked positions are left to the caller.
    The teacher is its logits (a model, or a level-logits cache's log-probs) or, for topk_kd and
    sampled_kd, the cached `signal` fields (research/teachers/signal.py)."""
    terms = {}
    if self.ce_weight:
      terms["ce"] = sequence.next_token_nll(student_logits, tokens)
    if self.kd_weight:
      student = student_logits[:, :-1]
      if self.name == "topk_kd":
        ids, log_probs = codec.decode_topk(signal["signal_topk"][:, :-1])
        kl = sparse.topk_reverse_kl if self.divergence == "reverse_kl" else sparse.topk_kl
        terms["kd"] = kl(student, ids, log_probs, self.temperature)
      elif self.name == "sampled_kd":
        terms["kd"] = sparse.sampled_kl(student, tokens[:, 1:], signal["signal_log_prob"][:, :-1],
                                        self.temperature)
      else:
        terms["kd"] = sequence.per_token(self.divergence, student, teacher_logits[:, :-1],
                                         self.temperature, self.beta, self.alpha)
    return terms


def exact_match_reward(tokens, loss_mask, ref_tokens, ref_mask) -> jnp.ndarray:
  """(R,) float32: 1.0 where a row's trained tokens (loss_mask 1: a sampled completion with its EOS)
  equal the reference row's exactly (same columns, same length), else 0. Rows are (R, L) in one
  layout, so completions start in the same column."""
  same = jnp.where(ref_mask > 0, tokens == ref_tokens, True) & ((loss_mask > 0) == (ref_mask > 0))
  return jnp.all(same, axis=-1).astype(jnp.float32)


def group_advantages(rewards, eps: float = 1e-4) -> jnp.ndarray:
  """GRPO's advantages of rewards (P, G), a group of G samples per prompt: (r − mean) / (std + eps)
  over each group, with the population std (an all-equal group gets 0)."""
  mean = jnp.mean(rewards, axis=-1, keepdims=True)
  return (rewards - mean) / (jnp.std(rewards, axis=-1, keepdims=True) + eps)


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
  if config.name in ("topk_kd", "sampled_kd"):
    if not config.kd_weight:
      raise UserError(f"method '{config.name}' has kd_weight=0, so the cached teacher signal would be "
                      "unused; set config.method.kd_weight (e.g. 1.0).")
    allowed = ("forward_kl", "reverse_kl") if config.name == "topk_kd" else ("forward_kl",)
    if config.divergence not in allowed or config.on_policy_fraction or config.chunk_size:
      raise UserError(f"method '{config.name}' trains on a fixed teacher cache: divergence one of "
                      f"{allowed}, on_policy_fraction 0 and chunk_size 0 (got {config.divergence}, "
                      f"{config.on_policy_fraction}, {config.chunk_size}).")
  if config.name == "grpo":
    if config.kd_weight or config.on_policy_fraction or config.replay_size or config.chunk_size:
      raise UserError("method 'grpo' has no teacher and always samples its own completions: set "
                      "kd_weight, on_policy_fraction, replay_size and chunk_size to 0 (got "
                      f"{config.kd_weight}, {config.on_policy_fraction}, {config.replay_size}, "
                      f"{config.chunk_size}).")
    if config.group_size < 2 or not config.sample_temperature:
      raise UserError(f"method 'grpo' compares the samples of a group: config.method.group_size must be "
                      f"≥ 2 and sample_temperature > 0 (got {config.group_size}, "
                      f"{config.sample_temperature}); e.g. group_size=8, sample_temperature=1.0.")
    return TokenDistillation(
        config.name, 0.0, 0.0, config.divergence, config.temperature, config.jsd_beta, config.skew_alpha,
        0, 0.0, config.sample_temperature, config.sample_top_k, config.sample_top_p, 0,
        config.replay_fresh, config.group_size)
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
