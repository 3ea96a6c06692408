r"""DeepSeek-AI 2025 (DeepSeek-R1), "distillation beats RL for a small student", at small scale:
2–3-digit addition on 2 CPU cores (issue 5; protocol in README.md).

Runs (arg `run`), all byte-level decoders on research/data/synthetic.py's arithmetic:
  teacher   a larger decoder (TEACHER) trained supervised on `arithmetic_multitask` (both tasks,
            all 8,000 train questions): it writes worked solutions for "[explain] a+b=" prompts
  init      the student's answer-only SFT on `arithmetic` 'train[:N]' ("37+85=" -> "122"): the
            one initialisation every arm starts from (per seed)
  traces    arm (a): SFT on the teacher's rejection-sampled correct solutions (dataset TRACES,
            written by reproduce.py: "[explain] 37+85=" -> the teacher's "7+5=12 c1;...;=122")
  grpo      arm (b): outcome-reward RL (method 'grpo', group size 8, reward = exact answer) on
            the same N answer prompts
  answer    arm (c): answer-only SFT continued on the same N questions
The arms read the init run from config.init_from (reproduce.py sets it):

  python -m experiments.distill --config=experiments/deepseekr1_2025/config.py:init,seed=0 \
      --workdir=/tmp/r1/init_seed0
  python -m experiments.distill --config=experiments/deepseekr1_2025/config.py:grpo,seed=0 \
      --config.init_from=/tmp/r1/init_seed0 --workdir=/tmp/r1/grpo_seed0

or everything (teacher, rejection sampling, 3 seeds × init + 3 arms, table + plot):

  python -m experiments.deepseekr1_2025.reproduce --workdir=/tmp/distillery/deepseekr1_2025

Equal student-token budget: every arm passes the same number of tokens through the student in
training rows (rows × seq_len): (a) STEPS[traces] × 32 × 60 = (b) STEPS[grpo] × (8 prompts × 8
samples) × 26 = (c) STEPS[answer] × 32 × 26, up to rounding (STEPS below).
"""
from research import config as config_lib
from research.errors import UserError

RUNS = ("teacher", "init", "traces", "grpo", "answer")
ARMS = ("traces", "grpo", "answer")
N = 2000  # training questions of the student (init and every arm)
TEST_QUESTIONS = 500  # the first 500 test questions
PROMPT_LEN = 20  # "[explain] 999+999=" is 18 bytes, + BOS
ANSWER_LEN, EXPLAIN_LEN = PROMPT_LEN + 6, PROMPT_LEN + 40  # answer ≤ 4 bytes, rationale ≤ 39, + EOS
TRACES = "deepseekr1_traces"  # the rejection-sampled dataset reproduce.py writes
SAMPLES_PER_QUESTION = 4  # K teacher samples per train question (temperature 1)
GROUP_SIZE = 8
TEACHER = dict(name="decoder", dim=96, depth=3, num_heads=4, num_kv_heads=4, mlp_dim=384)
STUDENT = dict(name="decoder", dim=64, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=256)
BATCH = {"teacher": 32, "init": 32, "traces": 32, "grpo": 8, "answer": 32}  # grpo: prompts (× 8 rows)
TOKENS_PER_STEP = {"traces": 32 * EXPLAIN_LEN, "grpo": 8 * GROUP_SIZE * ANSWER_LEN, "answer": 32 * ANSWER_LEN}
ARM_STEPS = 300  # arm (a)'s steps; the others get the same student tokens
STEPS = {"teacher": 1200, "init": 400, "traces": ARM_STEPS,
         **{arm: round(ARM_STEPS * TOKENS_PER_STEP["traces"] / TOKENS_PER_STEP[arm]) for arm in ("grpo", "answer")}}


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, run="init", seed=0)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run {arg.run!r}; choose one of: {', '.join(RUNS)}.")
  run = arg.run
  explain = run in ("teacher", "traces")
  name = {"teacher": "arithmetic_multitask", "traces": TRACES}.get(run, "arithmetic")
  train_split = {"teacher": "train", "traces": "train"}.get(run, f"train[:{N}]")
  # The traces dataset has one split; the trainer's token-level eval on it is a diagnostic only
  # (the exact-match evaluation of every run is reproduce.py's, on the test questions).
  eval_split = {"teacher": f"test[:{2 * TEST_QUESTIONS}]", "traces": "train[:500]"}.get(
      run, f"test[:{TEST_QUESTIONS}]")
  config = dict(
      seed=arg.seed,
      dataset=dict(name=name, train_split=train_split, eval_split=eval_split, download=False,
                   tokenizer="byte", seq_len=EXPLAIN_LEN if explain else ANSWER_LEN, prompt_len=PROMPT_LEN),
      batch_size=BATCH[run],
      eval_batch_size=250,
      num_steps=STEPS[run],
      model=dict(TEACHER if run == "teacher" else STUDENT),
      optimizer=dict(name="adam", lr=3e-3 if run in ("teacher", "init") else 1e-3, schedule="cosine",
                     warmup_steps=100 if run in ("teacher", "init") else 20, grad_clip_norm=1.0),
      log_every_steps=100,
      eval_every_steps=STEPS[run],
      checkpoint_every_steps=STEPS[run],
      keep_checkpoints=1,
  )
  if run == "grpo":
    config["method"] = dict(name="grpo", group_size=GROUP_SIZE, sample_temperature=1.0)
  return config_lib.build(config)
