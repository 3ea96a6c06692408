r"""Char-LM distillation on the King James Bible (byte tokenizer): GKD, MiniLLM (b), DistiLLM (b).

One teacher and one set of student runs serve the three papers' small-scale claims (see
experiments/gkd2024/reproduce.py, which computes all three). Launch one run (teacher first):

  python -m experiments.distill --config=experiments/gkd2024/config.py:teacher --workdir=/tmp/gkd/teacher
  python -m experiments.distill --config=experiments/gkd2024/config.py:warm,seed=0 --workdir=/tmp/gkd/warm_seed0
  python -m experiments.distill \
      --config=experiments/gkd2024/config.py:gkd,seed=0,teacher_dir=/tmp/gkd/teacher,init_dir=/tmp/gkd/warm_seed0 \
      --workdir=/tmp/gkd/gkd_seed0

Data: `kjv`, byte tokens. The teacher and the warm start read packed 64-byte rows (every byte a
target); the arms read the same stream cut into 64-byte windows whose first 32 bytes are the prompt
and whose last 32 the completion (dataset.prompt_len=32), so on-policy steps sample 32-byte
completions from real prompts.

Runs (arg `run`):
  teacher        decoder dim 96, depth 2, trained supervised on packed rows
  warm           the student (dim 48, depth 2) trained supervised on packed rows: the SFT warm
                 start every arm of that seed begins from (GKD and MiniLLM start from SFT students)
  sft            supervised on the completions, continued from the warm start
  supervised_kd  token-level forward KL to the teacher on the dataset's completions (λ = 0)
  gkd_mixed      GKD: JSD(β = 0.5), half of the steps on the student's own samples (λ = 0.5)
  gkd            GKD on-policy: JSD(β = 0.5), every step on fresh student samples (λ = 1)
  minillm        reverse KL on the student's samples (λ = 1): MiniLLM's mode-seeking divergence
                 (token-level, as in GKD's on-policy reverse KL, not MiniLLM's policy gradient)
  distillm       DistiLLM: skew reverse KL (α = 0.1) on student samples (λ = 1) with a replay
                 buffer of 8 batches, sampling afresh on half of the steps (replay_fresh 0.5)
Every arm samples at temperature 1 and runs ARM_STEPS steps (constant lr, no warm-up) with a
checkpoint every CHECKPOINT_EVERY steps, all kept, so reproduce.py can track the teacher-scored NLL
over training.
"""
from research import config as config_lib
from research.errors import UserError

TEACHER = dict(name="decoder", dim=96, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=256)
STUDENT = dict(name="decoder", dim=48, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=128)
SEQ_LEN = 64
PROMPT_LEN = 32
TEACHER_STEPS = 800
WARM_STEPS = 400
ARM_STEPS = 200
CHECKPOINT_EVERY = 25
BATCH = 32

KD = dict(name="token_kd", ce_weight=0.0, kd_weight=1.0, sample_temperature=1.0)
METHODS = {
    "sft": dict(name="supervised"),
    "supervised_kd": dict(KD, divergence="forward_kl", on_policy_fraction=0.0),
    "gkd_mixed": dict(KD, divergence="jsd", jsd_beta=0.5, on_policy_fraction=0.5),
    "gkd": dict(KD, divergence="jsd", jsd_beta=0.5, on_policy_fraction=1.0),
    "minillm": dict(KD, divergence="reverse_kl", on_policy_fraction=1.0),
    "distillm": dict(KD, divergence="skew_reverse_kl", skew_alpha=0.1, on_policy_fraction=1.0,
                     replay_size=8, replay_fresh=0.5),
}
ARMS = tuple(METHODS)
RUNS = ("teacher", "warm") + ARMS


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, run="gkd", seed=0, teacher_dir="", init_dir="", data_dir="",
                             arm_steps=ARM_STEPS, warm_steps=WARM_STEPS, teacher_steps=TEACHER_STEPS)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run {arg.run!r}; choose one of: {', '.join(RUNS)}.")
  config = dict(
      seed=arg.seed,
      dataset=dict(name="kjv", data_dir=arg.data_dir, download=False, tokenizer="byte", seq_len=SEQ_LEN,
                   prompt_len=0),
      batch_size=BATCH,
      eval_batch_size=512,
      model=dict(STUDENT),
      optimizer=dict(name="adam", lr=3e-3, schedule="cosine", warmup_steps=50, grad_clip_norm=1.0),
      parallel=dict(num_devices=1),
      log_every_steps=100,
      checkpoint_every_steps=-1,
      keep_checkpoints=1,
  )
  run = arg.run
  if run == "teacher":
    config.update(model=dict(TEACHER), num_steps=arg.teacher_steps)
  elif run == "warm":
    config.update(num_steps=arg.warm_steps)
  else:
    config["dataset"]["prompt_len"] = PROMPT_LEN
    config.update(num_steps=arg.arm_steps, init_from=arg.init_dir, method=dict(METHODS[run]),
                  log_every_steps=CHECKPOINT_EVERY, checkpoint_every_steps=CHECKPOINT_EVERY,
                  keep_checkpoints=1000,
                  optimizer=dict(name="adam", lr=1e-3, schedule="constant", grad_clip_norm=1.0))
    if run != "sft":
      config["teacher"] = dict(checkpoint=arg.teacher_dir, model=dict(TEACHER))
  return config_lib.build(config)
