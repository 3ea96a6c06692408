r"""Kim & Rush 2016, "Sequence-Level Knowledge Distillation", at toy scale: `styled_seq2seq`.

The task (research/data/synthetic.py): a source of 3–6 digits ("4 1 7") is spelled as words, each
reference in ONE style drawn at random (A English 65 %, B Spanish 35 %); a valid output is the source
rendered entirely in one style. The teacher's beam output is the mode (all style A), a simpler target
than the references: Seq-KD trains the student on it.

Runs (arg `run`, plus `small` for the CPU scale, `seed=N`, `teacher_dir=...`):
  teacher       the bigger decoder, trained on the references (supervised)
  baseline      the student, trained on the references (supervised)
  word_kd       Word-KD: the student on the references, 0.5 · CE + 0.5 · KL(teacher ‖ student) per
                token (forward KL at T = 1, Kim & Rush's word-level KD with α = 0.5)
  seq_kd        Seq-KD: the student trained (supervised) on the teacher's beam-5 outputs over the
                training prompts, the dataset `seqkd_data` written by experiments/label_with_teacher.py
  seq_word_kd   Seq-KD + Word-KD: the Seq-KD data with the word-level loss of word_kd on top

Small scale (2 CPU cores; the whole reproduction, all runs and 3 seeds: python -m
experiments.kimrush2016.reproduce --workdir=/tmp/distillery/kimrush2016):
  teacher  decoder dim 96, depth 2, 4 heads, MLP 256 (0.27 M parameters), 8 epochs
  student  decoder dim 48, depth 2, 4 heads, MLP 96 (0.07 M parameters), 2 epochs
  byte tokenizer; rows of 56 tokens, the prompt (BOS + ≤ 11 bytes) in the first 12 columns;
  batch 64, Adam 3e-3 with a cosine schedule.
  python -m experiments.distill --config=experiments/kimrush2016/config.py:teacher,small \
      --workdir=/tmp/kr/teacher
  python -m experiments.label_with_teacher --teacher=/tmp/kr/teacher \
      --output=styled_seq2seq_seqkd_small --decode=beam --beam_size=5
  python -m experiments.distill --config=experiments/kimrush2016/config.py:seq_kd,small \
      --workdir=/tmp/kr/seq_kd
  python -m experiments.distill --config=experiments/kimrush2016/config.py:word_kd,small,teacher_dir=/tmp/kr/teacher \
      --workdir=/tmp/kr/word_kd

Full scale (NOT RUN; a sketch for GPU/TPU, not a tested recipe): the paper's WMT'14 En→De setting
(4.5 M sentence pairs; teacher 4 × 1000 LSTM, student 2 × 500; 13 epochs of SGD; beam 5) mapped onto
our decoder-only LM. The source sentence is the prompt and the German sentence the completion, so
the data must be a prompt/completion TFDS dataset named `wmt14_ende_prompts` prepared in data_dir
(not built offline: convert TFDS `wmt14_translate/de-en` to {'prompt': en, 'completion': de}), with a
32k-token `tokenizers` BPE file (`tokenizer=/path/tokenizer.json`).
  teacher  decoder dim 2048, depth 18, 16 heads (8 KV), SwiGLU 5632, untied: 0.98 B parameters with a 32k vocabulary
  student  decoder dim 1024, depth 8, 16 heads (8 KV), SwiGLU 2816: 0.16 B parameters
  rows of 256 tokens (prompt 128), global batch 256, AdamW 3e-4 (warm-up 2,000 steps, cosine),
  gradient clipping 1.0, 100k steps (~6 epochs) for the teacher, 50k for each student.
The Seq-KD dataset is then `wmt14_ende_prompts_seqkd` (teacher beam 5 over the training prompts).
"""
from research import config as config_lib
from research.errors import UserError

RUNS = ("teacher", "baseline", "word_kd", "seq_kd", "seq_word_kd")
WORD_KD = dict(name="token_kd", ce_weight=0.5, kd_weight=0.5, divergence="forward_kl", temperature=1.0)

SMALL = dict(
    dataset=dict(name="styled_seq2seq", seq_len=56, prompt_len=12, download=False),
    seqkd_data="styled_seq2seq_seqkd_small",
    teacher=dict(name="decoder", dim=96, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=256),
    student=dict(name="decoder", dim=48, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=96),
    batch_size=64, eval_batch_size=500, teacher_epochs=8.0, student_epochs=2.0,
    optimizer=dict(name="adam", lr=3e-3, schedule="cosine"),
    teacher_steps=-1, student_steps=-1,
)
FULL = dict(
    dataset=dict(name="wmt14_ende_prompts", seq_len=256, prompt_len=128, overflow="truncate",
                 download=False, tokenizer="tokenizer.json"),
    seqkd_data="wmt14_ende_prompts_seqkd",
    teacher=dict(name="decoder", dim=2048, depth=18, num_heads=16, num_kv_heads=8, mlp_dim=5632),
    student=dict(name="decoder", dim=1024, depth=8, num_heads=16, num_kv_heads=8, mlp_dim=2816),
    batch_size=256, eval_batch_size=256, teacher_epochs=1.0, student_epochs=1.0,
    optimizer=dict(name="adam", lr=3e-4, schedule="cosine", warmup_steps=2000, weight_decay=0.01,
                   grad_clip_norm=1.0),
    teacher_steps=100_000, student_steps=50_000,
)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, run="baseline", small=False, seed=0, teacher_dir="", seqkd_data="")
  if arg.run not in RUNS:
    raise UserError(f"Unknown run {arg.run!r}; choose one of: {', '.join(RUNS)}.")
  scale = SMALL if arg.small else FULL
  is_teacher = arg.run == "teacher"
  dataset = dict(scale["dataset"])
  if arg.run.startswith("seq_"):
    dataset["name"] = arg.seqkd_data or scale["seqkd_data"]
  config = dict(
      seed=arg.seed,
      dataset=dataset,
      model=dict(scale["teacher" if is_teacher else "student"]),
      batch_size=scale["batch_size"],
      eval_batch_size=scale["eval_batch_size"],
      num_epochs=scale["teacher_epochs" if is_teacher else "student_epochs"],
      num_steps=scale["teacher_steps" if is_teacher else "student_steps"],
      optimizer=dict(scale["optimizer"]),
      log_every_steps=100,
      checkpoint_every_steps=-1 if arg.small else 5000,
      keep_checkpoints=1 if arg.small else 3,
  )
  if arg.run in ("word_kd", "seq_word_kd"):
    config["method"] = dict(WORD_KD)
    config["teacher"] = dict(checkpoint=arg.teacher_dir, model=dict(scale["teacher"]))
  if arg.run.startswith("seq_"):
    # The Seq-KD data has only a train split (all 10,000 prompts, as the baseline's): the trainer's
    # own next-token eval runs on its first 1,000 rows; the claims are scored on the test prompts.
    config["dataset"]["eval_split"] = "train[:1000]"
  return config_lib.build(config)
