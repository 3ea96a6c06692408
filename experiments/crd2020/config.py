r"""Tian, Krishnan & Isola 2020, "Contrastive Representation Distillation" — the CIFAR-100 benchmark.

The full-scale benchmark of the CRD paper (RepDistiller) and of DKD (mdistiller): TFDS `cifar100`
(50,000 train / 10,000 test, 32×32 RGB), 240 epochs, SGD momentum 0.9, batch 64, lr 0.05 (0.01 for
MobileNetV2 / ShuffleNet models), ×0.1 at epochs 150 / 180 / 210, weight decay 5e-4.
The small-scale version lives in experiments/zoo.

Arguments (big_vision style, e.g. `config.py:student,teacher=resnet32x4,student=resnet8x4,method=crd`):
  run        teacher | student
  teacher    the teacher's model name (research.models.CIFAR); `run=teacher` trains it with CE
  student    the student's model name (ignored by `run=teacher`)
  method     ce | kd | fitnets | at | rkd | pkt | sp | crd | crd_kd | dkd (ignored by `run=teacher`;
             `ce` is the student alone, no teacher)
  teacher_dir  workdir of the finished teacher run (every method but `ce` needs it)
  seed

Launch (needs internet once for CIFAR-100, and a GPU/TPU: ~187k steps a run):
  python -m experiments.distill --config=experiments/crd2020/config.py:teacher,teacher=resnet32x4 \
      --workdir=$W/teacher_resnet32x4
  python -m experiments.distill \
      --config=experiments/crd2020/config.py:student,teacher=resnet32x4,student=resnet8x4,method=crd,teacher_dir=$W/teacher_resnet32x4 \
      --workdir=$W/resnet32x4_resnet8x4_crd

Expected (paper, top-1 %, resnet32x4 → resnet8x4; see README.md): teacher 79.42, student alone 72.50,
KD 73.33, FitNet 73.50, AT 73.44, SP 72.94, RKD 71.90, PKT 73.64, CRD 75.51, CRD+KD 75.46 (unverified),
DKD 76.32 (mdistiller).
Not run by us yet at full scale.
"""
from research import config as config_lib
from research import models
from research.errors import UserError

RUNS = ("teacher", "student")
METHODS = ("ce", "kd", "fitnets", "at", "rkd", "pkt", "sp", "crd", "crd_kd", "dkd")
# The benchmark's (teacher, student) pairs: CRD Tables 1-2 / mdistiller (ResNet50 teachers are not in our zoo).
PAIRS = (
    ("resnet56", "resnet20"), ("resnet110", "resnet20"), ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("vgg13", "vgg8"),
    ("vgg13", "mobilenetv2"), ("resnet32x4", "shufflenetv1"), ("resnet32x4", "shufflenetv2"),
    ("wrn_40_2", "shufflenetv1"),
)
NUM_CLASSES = 100
EPOCHS = 240.0
BATCH_SIZE = 64
# RepDistiller train_student.py / train_teacher.py: lr 0.01 instead of 0.05 for these models.
SMALL_LR_MODELS = ("mobilenetv2", "shufflenetv1", "shufflenetv2")
# DKD's β per pair, from mdistiller configs/cifar100/dkd/*.yaml (its default, 8, for the others).
DKD_BETA = {
    ("resnet56", "resnet20"): 2.0, ("resnet110", "resnet32"): 2.0, ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0, ("vgg13", "vgg8"): 6.0, ("vgg13", "mobilenetv2"): 6.0,
}
# DKD warms its term up linearly over 20 epochs: 20 × (50,000 // 64 = 781 steps an epoch; the trainer
# drops the last partial batch) = 15,620 steps.
DKD_WARMUP_STEPS = 15620
KD = dict(temperature=4.0)  # RepDistiller --kd_T 4, mdistiller KD.TEMPERATURE / DKD.T 4
CRD = dict(crd_dim=128, crd_negatives=16384, crd_temperature=0.07, crd_momentum=0.5)
# RepDistiller scripts/run_cifar_distill.sh: `-r` (CE) defaults to 1, `-a` is the KD weight, `-b` the
# method's own. KD: -r 0.1 -a 0.9; FitNet -a 0 -b 100 (hint layer 2, trained jointly: no hint stage);
# AT -b 1000; SP -b 3000; RKD -b 1; PKT -b 30000; CRD -a 0 -b 0.8; CRD+KD -a 1 -b 0.8.
METHOD_SETTINGS = {
    "ce": dict(name="supervised"),
    "kd": dict(name="hinton_kd", ce_weight=0.1, kd_weight=0.9, **KD),
    "fitnets": dict(name="fitnets", feature_weight=100.0, student_taps=("stage2",),
                    teacher_taps=("stage2",), adapter=True, hint_steps=0),
    "at": dict(name="at", feature_weight=1000.0, at_p=2.0),
    "rkd": dict(name="rkd", feature_weight=1.0, rkd_distance=25.0, rkd_angle=50.0),
    "pkt": dict(name="pkt", feature_weight=30000.0),
    "sp": dict(name="sp", feature_weight=3000.0),
    "crd": dict(name="crd", feature_weight=0.8, **CRD),
    "crd_kd": dict(name="crd", kd_weight=1.0, feature_weight=0.8, **KD, **CRD),
    # mdistiller DKD: CE.WEIGHT 1, ALPHA 1, BETA (per pair), T 4, WARMUP 20 epochs.
    "dkd": dict(name="dkd", feature_weight=1.0, dkd_alpha=1.0, dkd_warmup_steps=DKD_WARMUP_STEPS, **KD),
}
# Heterogeneous pairs: RepDistiller resamples mismatched maps (FitNets' ConvReg uses a strided or
# transposed conv; AT average-pools the larger map). Our Hint regressor is 1×1 and our AT needs equal
# sizes, so these pairs compare taps of equal resolution instead: FitNets keeps the teacher's hint
# layer (stage2) and takes the student's stage of that size; AT pairs every student stage with the
# teacher stage of its size. (student_taps, teacher_taps) per method; read off the models' tap shapes.
HETEROGENEOUS_TAPS = {
    ("vgg13", "mobilenetv2"): dict(at=(("stage1", "stage2", "stage3"), ("stage1", "stage2", "stage3"))),
    ("resnet32x4", "shufflenetv1"): dict(fitnets=(("stage1",), ("stage2",)),
                                         at=(("stage1", "stage2"), ("stage2", "stage3"))),
    ("resnet32x4", "shufflenetv2"): dict(fitnets=(("stage1",), ("stage2",)),
                                         at=(("stage1", "stage2"), ("stage2", "stage3"))),
    ("wrn_40_2", "shufflenetv1"): dict(fitnets=(("stage1",), ("stage2",)),
                                       at=(("stage1", "stage2"), ("stage2", "stage3"))),
}


def _model(name: str, role: str) -> dict:
  if name not in models.CIFAR:
    raise UserError(f"Unknown {role} model '{name}'; choose one of: {', '.join(models.CIFAR)}.")
  return dict(name=name, num_classes=NUM_CLASSES)


def get_config(arg: str = ""):
  arg = config_lib.parse_arg(arg, run="student", teacher="resnet32x4", student="resnet8x4",
                             method="kd", teacher_dir="", seed=0)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run '{arg.run}'; choose one of {RUNS}.")
  if arg.method not in METHODS:
    raise UserError(f"Unknown method '{arg.method}'; choose one of {METHODS}.")
  trained = arg.teacher if arg.run == "teacher" else arg.student
  config = dict(
      seed=arg.seed,
      dataset=dict(name="cifar100", train_split="train", eval_split="test",
                   translate_px=4,  # stand-in for RandomCrop(32, padding=4) (zero fill)
                   hflip=True),
      batch_size=BATCH_SIZE,
      num_epochs=EPOCHS,
      model=_model(trained, "teacher" if arg.run == "teacher" else "student"),
      optimizer=dict(name="sgd", lr=0.01 if trained in SMALL_LR_MODELS else 0.05, momentum=0.9,
                     weight_decay=5e-4, schedule="step", decay_at=(0.625, 0.75, 0.875),  # 150/180/210 of 240
                     decay_factor=0.1),
      log_every_steps=100,
      checkpoint_every_steps=-1,  # every epoch
  )
  if arg.run == "student":
    method = dict(METHOD_SETTINGS[arg.method])
    if arg.method == "dkd":
      method["dkd_beta"] = DKD_BETA.get((arg.teacher, arg.student), 8.0)
    taps = HETEROGENEOUS_TAPS.get((arg.teacher, arg.student), {}).get(arg.method)
    if taps:
      method.update(student_taps=taps[0], teacher_taps=taps[1])
    config["method"] = method
    if arg.method != "ce":
      config["teacher"] = dict(checkpoint=arg.teacher_dir, model=_model(arg.teacher, "teacher"))
  return config_lib.build(config)
