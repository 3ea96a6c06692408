r"""Hsieh et al. 2023, "Distilling step-by-step", at small scale: 2–3-digit addition on 2 CPU cores.

Two students of the same size, trained for the same number of steps on the first N questions of
`arithmetic` (research/data/synthetic.py):
  label       label-only ("standard finetuning"): "37+85=" -> "122"
  multitask   distilling step-by-step: `arithmetic_multitask` 'train[:2N]', the same N questions as
              two tasks in one stream, "[answer] 37+85=" -> "122" and "[explain] 37+85=" ->
              "7+5=12 c1;3+8+1=12 c1;=122"; interleaved examples with one cross-entropy over both =
              the paper's L_label + λ·L_rationale with λ = 1 (up to the per-token weighting below)
The rationales are the dataset's exact column-addition steps: an ORACLE teacher, not a model's
chain of thought. Launch one run:

  python -m experiments.distill --config=experiments/stepbystep2023/config.py:multitask,n=250,seed=0 \
      --workdir=/tmp/sbs/multitask_n250_seed0

or the whole reproduction (4 sizes × 2 arms × 3 seeds, table + plot):

  python -m experiments.stepbystep2023.reproduce --workdir=/tmp/distillery/stepbystep2023

Runs (arg `run`): label | multitask; `n` = training questions; `seed`.
"""
from research import config as config_lib
from research.errors import UserError

RUNS = ("label", "multitask")
SIZES = (250, 500, 1000, 2000)  # training questions N, fixed before any run
PROMPT_LEN = 20  # "[explain] 999+999=" is 18 bytes, + BOS
SEQ_LEN = {"label": PROMPT_LEN + 6, "multitask": PROMPT_LEN + 40}  # answer ≤ 4 bytes, rationale ≤ 39, + EOS
STUDENT = dict(name="decoder", dim=64, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=256)
BATCH_SIZE = 32
NUM_STEPS = 600  # the same for both arms and every N (the multi-task student sees half as many
                  # answer examples per step: equal compute, not equal label passes)
TEST_QUESTIONS = 500  # the first 500 test questions


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, run="label", n=250, seed=0)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run {arg.run!r}; choose one of: {', '.join(RUNS)}.")
  if arg.n <= 0:
    raise UserError(f"n={arg.n}: the number of training questions must be positive.")
  multitask = arg.run == "multitask"
  per_question = 2 if multitask else 1  # rows per question in the dataset
  config = dict(
      seed=arg.seed,
      dataset=dict(name="arithmetic_multitask" if multitask else "arithmetic",
                   train_split=f"train[:{per_question * arg.n}]",
                   eval_split=f"test[:{per_question * TEST_QUESTIONS}]",
                   download=False, tokenizer="byte", seq_len=SEQ_LEN[arg.run], prompt_len=PROMPT_LEN),
      batch_size=BATCH_SIZE,
      eval_batch_size=250,
      num_steps=NUM_STEPS,
      model=dict(STUDENT),
      optimizer=dict(name="adam", lr=3e-3, schedule="cosine", warmup_steps=50, grad_clip_norm=1.0),
      log_every_steps=250,
      eval_every_steps=NUM_STEPS,
      checkpoint_every_steps=NUM_STEPS,
      keep_checkpoints=1,
  )
  return config_lib.build(config)
