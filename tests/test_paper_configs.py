"""The full-scale paper configs (experiments/crd2020, experiments/beyer2022): every run resolves, the
values are the papers', and bad arguments are UserErrors. Nothing is trained (no datasets needed)."""
import functools
import itertools

import jax
import pytest

from experiments.beyer2022 import config as beyer
from experiments.crd2020 import config as crd
from research import config as config_lib
from research import methods, models
from research.errors import UserError
from research.methods import taps
from research.train.state import init_variables

TEACHERS = sorted({t for t, _ in crd.PAIRS})


def _crd(arg):
  return config_lib.resolve(crd.get_config(arg))


def _student(teacher, student, method, teacher_dir="/teachers/t"):
  return _crd(f"student,teacher={teacher},student={student},method={method},teacher_dir={teacher_dir}")


# ----------------------------------------------------------------------------- crd2020

@pytest.mark.parametrize("teacher", TEACHERS)
def test_crd_teacher_runs_resolve(teacher):
  config = _crd(f"teacher,teacher={teacher}")
  assert config.model.name == teacher and config.model.num_classes == 100
  assert config.method.name == "supervised" and not config.teacher.checkpoint
  assert config.optimizer.lr == 0.05


@pytest.mark.parametrize("pair,method", list(itertools.product(crd.PAIRS, crd.METHODS)))
def test_crd_student_runs_resolve(pair, method):
  teacher, student = pair
  config = _student(teacher, student, method)
  assert config.model.name == student and config.model.num_classes == 100
  if method == "ce":
    assert config.method.name == "supervised" and not config.teacher.checkpoint
  else:
    assert config.teacher.checkpoint == "/teachers/t"
    assert config.teacher.model.name == teacher and config.teacher.model.num_classes == 100


def test_crd_recipe():
  """RepDistiller / mdistiller: CIFAR-100, 240 epochs, SGD 0.9, batch 64, lr 0.05, ×0.1 at 150/180/210, wd 5e-4."""
  config = _student("resnet32x4", "resnet8x4", "crd")
  assert (config.dataset.name, config.dataset.train_split, config.dataset.eval_split) == ("cifar100", "train", "test")
  assert config.dataset.translate_px == 4 and config.dataset.hflip  # RandomCrop(32, 4) + flip
  assert config.num_epochs == 240 and config.num_steps == -1 and config.batch_size == 64
  opt = config.optimizer
  assert (opt.name, opt.lr, opt.momentum, opt.weight_decay) == ("sgd", 0.05, 0.9, 5e-4)
  assert opt.schedule == "step" and opt.decay_factor == 0.1
  assert opt.decay_at == tuple(e / 240 for e in (150, 180, 210)) == (0.625, 0.75, 0.875)
  assert opt.warmup_steps == 0 and opt.grad_clip_norm == 0


@pytest.mark.parametrize("teacher,student", [p for p in crd.PAIRS if p[1] in crd.SMALL_LR_MODELS])
def test_crd_mobile_students_use_lr_001(teacher, student):
  assert _student(teacher, student, "kd").optimizer.lr == 0.01
  assert _crd(f"teacher,teacher={student}").optimizer.lr == 0.01  # same rule when trained as a model


def test_crd_method_weights_are_repdistillers():
  def method(name, pair=("resnet32x4", "resnet8x4")):
    return _student(*pair, name).method

  kd = method("kd")
  assert (kd.name, kd.ce_weight, kd.kd_weight, kd.temperature) == ("hinton_kd", 0.1, 0.9, 4.0)
  fitnets = method("fitnets")
  assert (fitnets.ce_weight, fitnets.kd_weight, fitnets.feature_weight) == (1.0, 0.0, 100.0)
  assert fitnets.student_taps == fitnets.teacher_taps == ("stage2",) and fitnets.hint_steps == 0
  assert (method("at").feature_weight, method("at").at_p) == (1000.0, 2.0)
  rkd = method("rkd")
  assert (rkd.feature_weight, rkd.rkd_distance, rkd.rkd_angle) == (1.0, 25.0, 50.0)
  assert method("pkt").feature_weight == 30000.0
  assert method("sp").feature_weight == 3000.0
  for name in ("fitnets", "at", "rkd", "pkt", "sp", "crd"):
    assert (method(name).ce_weight, method(name).kd_weight) == (1.0, 0.0), name  # -r 1 -a 0
  c = method("crd")
  assert (c.name, c.feature_weight, c.crd_negatives, c.crd_temperature, c.crd_dim, c.crd_momentum) == (
      "crd", 0.8, 16384, 0.07, 128, 0.5)
  ckd = method("crd_kd")
  assert (ckd.name, ckd.ce_weight, ckd.kd_weight, ckd.temperature, ckd.feature_weight) == ("crd", 1.0, 1.0, 4.0, 0.8)
  assert ckd.crd_negatives == 16384


def test_crd_dkd_settings_are_mdistillers():
  dkd = _student("resnet32x4", "resnet8x4", "dkd").method
  assert (dkd.ce_weight, dkd.kd_weight, dkd.feature_weight) == (1.0, 0.0, 1.0)
  assert (dkd.dkd_alpha, dkd.dkd_beta, dkd.temperature) == (1.0, 8.0, 4.0)
  assert dkd.dkd_warmup_steps == 20 * (50_000 // 64) == 15620  # 20 epochs of 781 steps
  betas = {pair: _student(*pair, "dkd").method.dkd_beta for pair in crd.PAIRS}
  assert betas[("wrn_40_2", "wrn_16_2")] == 6.0 and betas[("resnet56", "resnet20")] == 2.0
  assert betas[("resnet32x4", "shufflenetv1")] == 8.0


def test_crd_students_need_a_teacher_dir():
  with pytest.raises(UserError, match="needs a teacher"):
    _student("resnet32x4", "resnet8x4", "crd", teacher_dir="")
  assert _student("resnet32x4", "resnet8x4", "ce", teacher_dir="").method.name == "supervised"


@pytest.mark.parametrize("arg", ["student,bogus=1", "bogus", "student,method=vid", "teacher,teacher=resnet50",
                                 "student,student=mlp", "student,seed=x", "student,teacher"])
def test_crd_bad_arguments_are_user_errors(arg):
  with pytest.raises(UserError):
    crd.get_config(arg)


@functools.lru_cache(maxsize=None)
def _tap_shapes(name: str) -> dict:
  model = models.build(config_lib.build({"model": {"name": name, "num_classes": 100}}).model)
  variables = jax.eval_shape(lambda: init_variables(model, (32, 32, 3), jax.random.PRNGKey(0)))
  return taps.available(model, variables, (32, 32, 3))


@pytest.mark.parametrize("pair", crd.PAIRS)
def test_crd_methods_fit_the_models_taps(pair):
  """Beyond resolve: each method's taps exist on both models and their shapes are compatible."""
  teacher, student = pair
  for method in crd.METHODS:
    config = _student(teacher, student, method)
    methods.build(config.method, _tap_shapes(student), _tap_shapes(teacher), num_train=50_000)


# ----------------------------------------------------------------------------- beyer2022

@pytest.mark.parametrize("run,data,variant", list(itertools.product(
    beyer.RUNS, beyer.DATASETS, ("fast", "medium", "long"))))
def test_beyer_runs_resolve(run, data, variant):
  config = config_lib.resolve(beyer.get_config(f"{run},data={data},variant={variant},teacher_dir=/t"))
  assert config.dataset.name == beyer.DATASETS[data]["name"]
  assert config.model.num_classes == {"flowers": 102, "pet": 37}[data]
  if run in ("teacher", "scratch"):
    assert config.method.name == "supervised" and not config.teacher.checkpoint
  else:
    assert config.teacher.checkpoint == "/t" and config.teacher.model.num_classes == config.model.num_classes


def test_beyer_recipe():
  """big_vision bigsweep_flowers_pet.py: KL only, Adam, cosine after 1,500 warm-up steps, clip 1.0, batch 512."""
  fm = config_lib.resolve(beyer.get_config("function_matching,data=flowers,variant=fast,teacher_dir=/t"))
  assert (fm.method.name, fm.method.ce_weight, fm.method.kd_weight, fm.method.mixup) == ("hinton_kd", 0.0, 1.0, 1.0)
  assert fm.teacher.view == "same" and fm.dataset.translate_px > 0
  opt = fm.optimizer
  assert (opt.name, opt.schedule, opt.warmup_steps, opt.grad_clip_norm) == ("adam", "cosine", 1500, 1.0)
  assert fm.batch_size == 512 and fm.dataset.train_split == "train" and fm.dataset.eval_split == "test"
  assert (fm.method.temperature, opt.lr, opt.weight_decay) == (10.0, 3e-3, 3e-4)
  assert fm.num_steps == 10_000 * 1020 // 512 == 19921  # big_vision: int(epochs · examples / batch)
  long = config_lib.resolve(beyer.get_config("function_matching,data=flowers,variant=long,teacher_dir=/t"))
  assert (long.method.temperature, long.optimizer.lr, long.optimizer.weight_decay) == (1.0, 3e-4, 1e-5)
  assert long.num_steps == 1_000_000 * 1020 // 512
  pet = config_lib.resolve(beyer.get_config("function_matching,data=pet,variant=long,teacher_dir=/t"))
  assert pet.dataset.train_split == "train[:90%]"
  assert (pet.method.temperature, pet.optimizer.lr, pet.num_steps) == (2.0, 3e-3, 30_000 * 3312 // 512)


def test_beyer_teacher_views_and_mixup():
  def method_and_view(run):
    config = config_lib.resolve(beyer.get_config(f"{run},teacher_dir=/t"))
    return config.method.mixup, config.teacher.view

  assert method_and_view("fixed") == (0.0, "clean")
  assert method_and_view("consistent") == (0.0, "same")
  assert method_and_view("function_matching") == (1.0, "same")


def test_beyer_epochs_argument():
  config = beyer.get_config("function_matching,data=pet,epochs=300,teacher_dir=/t")
  assert config.num_steps == 300 * 3312 // 512


@pytest.mark.parametrize("arg", ["fm", "function_matching,data=food101", "consistent,variant=huge",
                                 "fixed,epochs=-1", "teacher,teacher=mlp", "fixed,lr=0.1"])
def test_beyer_bad_arguments_are_user_errors(arg):
  with pytest.raises(UserError):
    beyer.get_config(arg)
