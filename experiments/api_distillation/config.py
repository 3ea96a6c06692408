r"""Distilling through an API: what a student learns at each level of access to a teacher (issue 5).

Two studies, one teacher each, the teacher served by experiments/serve_teacher.py and labelled
through its OpenAI-compatible API (full logits, which no public API returns, in process):

  image     Fashion-MNIST. Teacher: MLP 784-1200-1200-10 without dropout, trained on the 60,000
            training images. Attacker: the first ATTACK_IMAGES training images, unlabelled, sent to
            the API once each; it answers the top-1 label (level text), the top-5 log-probs (topk,
            k = 5) or all ten log-probs (logits), at temperature 1. Student: MLP 784-800-800-10
            trained KD-only (no true labels) on the answers for IMAGE_EPOCHS epochs. Reference
            arm `true_labels`: the same student on the same images with their real labels.
  language  King James Bible, byte tokens. Teacher: GKD's char-LM teacher (experiments/gkd2024).
            Attacker: the first LM_QUERIES training windows of 64 bytes (32-byte prompt, 32-byte
            completion), one query each: echo scoring for top-20 / top-5 / top-1 log-probs per byte
            (levels topk), a sampled 32-byte continuation of the prompt for text only, in-process
            log-probs for full logits. Student: GKD's student size, trained from scratch for
            LM_STEPS steps on the completion bytes. Reference arm `scratch`: the same student
            trained on the real text of the whole training split (no teacher), evaluated along the
            way: the compute ledger's "cost of reaching the same quality without a teacher".

  python -m experiments.api_distillation.reproduce --workdir=/tmp/distillery/api_distillation

One run by hand (after the reproduction wrote the caches):
  python -m experiments.distill --config=experiments/api_distillation/config.py:image_student,level=topk5,seed=0 \
      --workdir=/tmp/api/image_topk5_seed0

Runs (arg `run`): image_teacher | image_student | lm_teacher | lm_student; `level` one of the
study's LEVELS (image: text, topk5, logits, true_labels; language: logits, topk20, topk5, topk1,
text, scratch); `seed`; `cache` = the cache's name (default: CACHE[study].format(level)).
"""
from research import config as config_lib
from research.errors import UserError

ATTACK_IMAGES = 5000
IMAGE_EPOCHS = 30
IMAGE_LEVELS = {"text": ("text", 0), "topk5": ("topk", 5), "logits": ("logits", 0), "true_labels": None}
LM_QUERIES = 4000
LM_STEPS = 600
LM_SEQ_LEN, LM_PROMPT_LEN = 64, 32
LM_LEVELS = {"logits": ("logits", 0), "topk20": ("topk", 20), "topk5": ("topk", 5), "topk1": ("topk", 1),
             "text": ("text", 0), "scratch": None}
LM_TEACHER = dict(name="decoder", dim=96, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=256)
LM_STUDENT = dict(name="decoder", dim=48, depth=2, num_heads=4, num_kv_heads=4, mlp_dim=128)
CACHE = {"image": "fmnist_api_{}", "language": "kjv_api_{}"}
RUNS = ("image_teacher", "image_student", "lm_teacher", "lm_student")
_KD = dict(ce_weight=0.0, kd_weight=1.0, temperature=1.0)
METHODS = {"logits": dict(_KD, name="hinton_kd"), "topk": dict(_KD, name="topk_kd"),
           "text": dict(name="supervised")}


def method_for(level: str, language: bool) -> dict:
  """The loss of an access level: dense KL, top-k KL with a tail bucket, or next-token/label CE."""
  method = dict(METHODS[level])
  if language and level == "logits":
    method["name"] = "token_kd"
  return method


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, run="image_student", level="topk5", seed=0, cache="", data_dir="",
                             lm_steps=LM_STEPS)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run {arg.run!r}; choose one of: {', '.join(RUNS)}.")
  language = arg.run.startswith("lm")
  levels = LM_LEVELS if language else IMAGE_LEVELS
  if arg.run.endswith("student") and arg.level not in levels:
    raise UserError(f"level={arg.level!r}: the {'language' if language else 'image'} study's levels are "
                    f"{', '.join(levels)}.")
  if language:
    config = dict(
        seed=arg.seed,
        dataset=dict(name="kjv", data_dir=arg.data_dir, download=False, tokenizer="byte", seq_len=LM_SEQ_LEN,
                     prompt_len=0),
        batch_size=32, eval_batch_size=512, model=dict(LM_TEACHER), num_steps=800,
        optimizer=dict(name="adam", lr=3e-3, schedule="cosine", warmup_steps=50, grad_clip_norm=1.0),
        parallel=dict(num_devices=1), log_every_steps=100, checkpoint_every_steps=-1, keep_checkpoints=1)
    if arg.run == "lm_student":
      config["dataset"]["prompt_len"] = LM_PROMPT_LEN
      config.update(model=dict(LM_STUDENT), num_steps=arg.lm_steps, eval_every_steps=arg.lm_steps // 12)
      if arg.level == "scratch":
        config["num_steps"] = 2 * arg.lm_steps  # long enough to see where it reaches the students' quality
      else:
        config.update(teacher=dict(cache=arg.cache or CACHE["language"].format(arg.level)),
                      method=method_for(LM_LEVELS[arg.level][0], True))
    return config_lib.build(config)
  config = dict(
      seed=arg.seed,
      dataset=dict(name="fashion_mnist", data_dir=arg.data_dir, download=False),
      batch_size=128, eval_batch_size=1000, num_epochs=10,
      model=dict(name="mlp", widths=(1200, 1200)),
      optimizer=dict(name="adam", lr=1e-3, schedule="cosine"),
      parallel=dict(num_devices=1), log_every_steps=200, checkpoint_every_steps=-1, keep_checkpoints=1)
  if arg.run == "image_student":
    config.update(model=dict(name="mlp", widths=(800, 800)), num_epochs=IMAGE_EPOCHS)
    if arg.level == "true_labels":
      config["dataset"]["train_split"] = f"train[:{ATTACK_IMAGES}]"
    else:
      config.update(teacher=dict(cache=arg.cache or CACHE["image"].format(arg.level)),
                    method=method_for(IMAGE_LEVELS[arg.level][0], False))
  return config_lib.build(config)
