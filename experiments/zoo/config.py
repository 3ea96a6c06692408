r"""The vision distillation zoo at small scale, on 2 CPU cores: MNIST-5k and 8×8 digits.

Every method distils the same teacher→student pair (one pair for MLPs, one for CNNs), so the
numbers compare. Launch one run (the teacher first):

  python -m experiments.distill --config=experiments/zoo/config.py:teacher --workdir=/tmp/zoo/teacher
  python -m experiments.distill --config=experiments/zoo/config.py:crd,teacher_dir=/tmp/zoo/teacher \
      --workdir=/tmp/zoo/crd

or the whole reproduction (all runs, 3 seeds, table + plot; 10–14 min on 2 cores; expected
verdicts: RKD and multi-teacher PASS, the other six NOT REPRODUCED, see README.md):

  python -m experiments.zoo.reproduce --workdir=/tmp/distillery/zoo

Two teacher→student pairs, so each method runs where it applies, cheaply enough for CI:
  MLP pair   teacher MLP 800-800 (dropout 0.3, ±1 px shifts, 15 epochs) → student MLP 300-300:
             logit and representation methods (KD, DKD, CRD, PKT, SP, RKD, born-again, ensembles,
             metric learning, Beyer et al.'s function matching)
  CNN pair   on 8×8 `digits` (1,437 train / 360 test; our plain CNNs learn 28×28 MNIST too slowly
             for CI): teacher CNN (16, 32) → student CNN (8, 16): attention transfer, and FitNets
             with a thin, deep student CNN (4, 8) × 3 convs per stage

Runs (arg `run`):
  teacher, teacher_b        MLP teacher, CE (teacher_b: another initialisation)
  ce, kd                    MLP student, CE alone / Hinton KD (T 4, CE 0.1 + KD 0.9), 10 epochs
  crd, crd_kd, dkd,         the zoo's methods on the MLP pair, weights as in CRD's benchmark
  pkt, sp, rkd                (RepDistiller / mdistiller)
  ban                       born-again: the student taught by a student run (teacher_dir), KD only
  ensemble                  KD from teacher_dir and ensemble_dir together (probabilities averaged)
  embed_teacher,            metric learning on digits 0–4 (5–9 held out): 32-d embeddings trained
  embed_triplet, embed_rkd    with the batch-hard triplet loss; the student adds RKD (distance 1, angle 2)
  fixed, consistent,        Beyer et al. 2022 on an unlabelled 1,000-image transfer set with ±2 px
  funmatch                    shifts: teacher on clean images / on the student's view / same view +
                            mixup; `long` multiplies the schedule by 10
  cnn_teacher, cnn_ce,      the CNN pair: teacher; student with CE, KD, AT (β 1000 on stage1 and
  cnn_kd, cnn_at, cnn_at_kd   stage2), AT + KD
  thin_ce, thin_fitnets     FitNets: thin deep student from scratch / hint stage (1 epoch, its stage1
                            ← the teacher's stage1 through a 1×1-conv regressor) then KD
"""
from research import config as config_lib
from research.errors import UserError

TEACHER = dict(name="mlp", widths=(800, 800), dropout_hidden=0.3)
STUDENT = dict(name="mlp", widths=(300, 300))
CNN_TEACHER = dict(name="cnn", widths=(16, 32))
CNN_STUDENT = dict(name="cnn", widths=(8, 16))
THIN_DEEP = dict(name="cnn", widths=(4, 8), blocks_per_stage=3)
CNN_EPOCHS = 20.0  # digits: 22 steps an epoch; the teacher trains 3×, students 2× this
EMBED_DIM = 32
HELD_OUT = (5, 6, 7, 8, 9)
TRANSFER_SPLIT = "train[:1000]"
KD = dict(temperature=4.0, ce_weight=0.1, kd_weight=0.9)

METHODS = {
    "ce": dict(name="supervised"),
    "kd": dict(name="hinton_kd", **KD),
    "cnn_ce": dict(name="supervised"),
    "cnn_kd": dict(name="hinton_kd", **KD),
    "cnn_at": dict(name="at", feature_weight=1000.0),
    "cnn_at_kd": dict(name="at", feature_weight=1000.0, **KD),
    "crd": dict(name="crd", feature_weight=0.8, crd_negatives=1024),
    "crd_kd": dict(name="crd", feature_weight=0.8, crd_negatives=1024, temperature=4.0, kd_weight=1.0),
    "dkd": dict(name="dkd", feature_weight=1.0, temperature=4.0, dkd_alpha=1.0, dkd_beta=8.0,
                dkd_warmup_steps=124),  # 2 of 10 epochs (mdistiller: 20 of 240)
    "pkt": dict(name="pkt", feature_weight=30000.0),
    "sp": dict(name="sp", feature_weight=3000.0),
    "rkd": dict(name="rkd", feature_weight=1.0),
    "ban": dict(name="hinton_kd", temperature=1.0, ce_weight=0.0, kd_weight=1.0),
    "ensemble": dict(name="hinton_kd", **KD),
}
RUNS = ("teacher", "teacher_b", "cnn_teacher", "thin_ce", "thin_fitnets", "embed_teacher", "embed_triplet", "embed_rkd",
        "fixed", "consistent", "funmatch") + tuple(METHODS)


def get_config(arg=None):
  arg = config_lib.parse_arg(arg, run="kd", seed=0, teacher_dir="", ensemble_dir="", long=False,
                             epochs=10.0)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run {arg.run!r}; choose one of: {', '.join(RUNS)}.")
  config = dict(
      seed=arg.seed,
      dataset=dict(name="mnist5k"),
      batch_size=64,
      num_epochs=arg.epochs,
      model=dict(STUDENT),
      teacher=dict(checkpoint=arg.teacher_dir, model=dict(TEACHER)),
      optimizer=dict(name="adam", lr=2e-3, schedule="cosine"),
      log_every_steps=100,
  )
  run = arg.run
  if run in ("teacher", "teacher_b"):
    config.update(model=dict(TEACHER), num_epochs=15.0, teacher=dict(checkpoint=""),
                  seed=arg.seed + (100 if run == "teacher_b" else 0))
    config["dataset"]["translate_px"] = 1
  elif run == "cnn_teacher":
    config.update(model=dict(CNN_TEACHER), num_epochs=3 * CNN_EPOCHS, teacher=dict(checkpoint=""))
  elif run in METHODS:
    config["method"] = METHODS[run]
    if run == "ban":  # the teacher is the previous generation: a student run
      config["teacher"]["model"] = dict(STUDENT)
    if run == "ensemble":
      config["teacher"]["ensemble"] = (arg.ensemble_dir,)
    if run.startswith("cnn_"):
      config.update(model=dict(CNN_STUDENT), teacher=dict(checkpoint=arg.teacher_dir, model=dict(CNN_TEACHER)))
  elif run in ("thin_ce", "thin_fitnets"):
    config.update(model=dict(THIN_DEEP), teacher=dict(checkpoint=arg.teacher_dir, model=dict(CNN_TEACHER)))
    if run == "thin_fitnets":
      config["method"] = dict(name="fitnets", hint_steps=22, feature_weight=0.0,  # FitNets: hint, then KD
                              student_taps=("stage1",), teacher_taps=("stage1",), **KD)
  elif run.startswith("embed_"):
    model = dict(TEACHER if run == "embed_teacher" else STUDENT, num_classes=EMBED_DIM)
    config["model"] = model
    config["dataset"].update(exclude_labels=HELD_OUT)
    config["method"] = dict(name="rkd" if run == "embed_rkd" else "supervised", ce_weight=0.0,
                            triplet_weight=1.0, triplet_margin=0.2)
    if run == "embed_teacher":
      config.update(num_epochs=12.0, teacher=dict(checkpoint=""))
    else:
      config["teacher"]["model"] = dict(TEACHER, num_classes=EMBED_DIM)
    if run == "embed_rkd":  # RKD's metric-learning weights: distance 1, angle 2 on the embeddings
      config["method"].update(feature_weight=1.0, rkd_distance=1.0, rkd_angle=2.0,
                              student_taps=("logits",), teacher_taps=("logits",))
  else:  # Beyer et al. 2022: KD only, on an unlabelled transfer set, with shifted views
    config["dataset"].update(train_split=TRANSFER_SPLIT, translate_px=2)
    config["method"] = dict(name="hinton_kd", temperature=1.0, ce_weight=0.0, kd_weight=1.0,
                            mixup=1.0 if run == "funmatch" else 0.0)
    config["teacher"]["view"] = "clean" if run == "fixed" else "same"
    config["num_epochs"] = 2.0 * arg.epochs * (10 if arg.long else 1)
  if run.startswith(("cnn_", "thin_")):
    config["dataset"]["name"] = "digits"
    config["optimizer"]["lr"] = 5e-3
    if run != "cnn_teacher":
      config["num_epochs"] = 2 * CNN_EPOCHS
  return config_lib.build(config)
