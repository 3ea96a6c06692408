"""Config schema: defaults, validation of keys / types / choices, the config-argument parser,
and the Hinton 2015 experiment configs."""
import ml_collections
import pytest

from research import config as config_lib
from research.errors import UserError
from experiments.hinton2015 import config as hinton_config


# ----------------------------------------------------------------------------- resolve

def test_resolve_fills_defaults_for_a_partial_dict():
  resolved = config_lib.resolve(dict(seed=3, optimizer=dict(lr=0.01), model=dict(widths=(64,))))
  assert isinstance(resolved, ml_collections.FrozenConfigDict)
  assert resolved.seed == 3
  assert resolved.optimizer.lr == 0.01
  assert resolved.optimizer.name == "adam" and resolved.optimizer.schedule == "cosine"
  assert resolved.model.widths == (64,) and resolved.model.name == "mlp"
  assert resolved.dataset.name == "mnist5k" and resolved.batch_size == 128
  # Every default key is present, nothing else.
  assert _flat_keys(resolved) == _flat_keys(config_lib.defaults())


def test_resolve_of_empty_dict_is_the_defaults():
  assert config_lib.resolve({}).to_dict() == config_lib.defaults().to_dict()


def test_resolve_does_not_mutate_the_defaults():
  config_lib.resolve(dict(seed=5, dataset=dict(name="digits")))
  assert config_lib.defaults().seed == 0 and config_lib.defaults().dataset.name == "mnist5k"


def test_resolved_config_is_frozen():
  resolved = config_lib.resolve({})
  with pytest.raises((AttributeError, TypeError, ValueError)):
    resolved.seed = 1  # type: ignore[misc]


@pytest.mark.parametrize("overrides,key", [
    (dict(learning_rate=0.1), "learning_rate"),
    (dict(optimizer=dict(learning_rate=0.1)), "optimizer.learning_rate"),
    (dict(teacher=dict(model=dict(layers=3))), "teacher.model.layers"),
    (dict(dataset=dict(nmae="digits")), "dataset.nmae"),
])
def test_unknown_key_is_rejected_by_name(overrides, key):
  with pytest.raises(UserError, match=f"config.{key}"):
    config_lib.resolve(overrides)


def test_unknown_key_message_lists_the_known_keys():
  with pytest.raises(UserError) as info:
    config_lib.resolve(dict(optimizer=dict(learnig_rate=0.1)))
  assert "lr" in str(info.value) and "weight_decay" in str(info.value)


@pytest.mark.parametrize("overrides,key", [
    (dict(optimizer=dict(lr="0.1")), "optimizer.lr"),          # str for float
    (dict(seed=1.0), "seed"),                                   # float for int
    (dict(batch_size=True), "batch_size"),                      # bool for int
    (dict(num_epochs=True), "num_epochs"),                      # bool for float
    (dict(dataset=dict(download="no")), "dataset.download"),    # str for bool
    (dict(dataset=dict(download=1)), "dataset.download"),       # int for bool
    (dict(dataset=dict(name=5)), "dataset.name"),               # int for str
    (dict(model=dict(widths=800)), "model.widths"),             # int for tuple
    (dict(model="mlp"), "model"),                               # value for a section
])
def test_wrong_type_is_rejected(overrides, key):
  with pytest.raises(UserError, match=key.replace(".", r"\.")):
    config_lib.resolve(overrides)


def test_int_for_float_is_accepted_as_float():
  resolved = config_lib.resolve(dict(num_epochs=3, optimizer=dict(lr=1)))
  assert resolved.num_epochs == 3.0 and isinstance(resolved.num_epochs, float)
  assert isinstance(resolved.optimizer.lr, float)


def test_list_for_tuple_becomes_tuple():
  resolved = config_lib.resolve(dict(model=dict(widths=[32, 16]), dataset=dict(exclude_labels=[3])))
  assert resolved.model.widths == (32, 16) and isinstance(resolved.model.widths, tuple)
  assert resolved.dataset.exclude_labels == (3,) and isinstance(resolved.dataset.exclude_labels, tuple)
  built = config_lib.build(dict(model=dict(widths=[32, 16])))  # the unfrozen config, too
  assert built.model.widths == (32, 16) and isinstance(built.model.widths, tuple)


def test_resolve_accepts_a_config_dict():
  resolved = config_lib.resolve(ml_collections.ConfigDict(dict(method=dict(name="supervised"), seed=4)))
  assert resolved.seed == 4


@pytest.mark.parametrize("overrides,needle", [
    (dict(method=dict(name="foo")), "method.name"),
    (dict(optimizer=dict(name="rmsprop")), "optimizer.name"),
    (dict(optimizer=dict(schedule="linear")), "optimizer.schedule"),
    (dict(parallel=dict(mode="pjit")), "parallel.mode"),
])
def test_invalid_choice_is_rejected(overrides, needle):
  with pytest.raises(UserError, match=needle):
    config_lib.resolve(overrides)


@pytest.mark.parametrize("overrides", [
    dict(batch_size=0), dict(eval_batch_size=-1), dict(num_epochs=0.0, num_steps=-1)])
def test_invalid_sizes_are_rejected(overrides):
  with pytest.raises(UserError):
    config_lib.resolve(overrides)


def test_num_steps_alone_is_enough():
  assert config_lib.resolve(dict(num_epochs=0.0, num_steps=10)).num_steps == 10


def test_distillation_needs_a_teacher_checkpoint():
  with pytest.raises(UserError, match="teacher.checkpoint"):
    config_lib.resolve(dict(method=dict(name="hinton_kd", temperature=2.0, kd_weight=0.5)))
  resolved = config_lib.resolve(dict(method=dict(name="hinton_kd"), teacher=dict(checkpoint="/t")))
  assert resolved.teacher.checkpoint == "/t"


# ----------------------------------------------------------------------------- parse_arg

def test_parse_arg_run_flag_and_value():
  arg = config_lib.parse_arg("student_kd,small,seed=2", run="teacher", small=False, seed=0)
  assert (arg.run, arg.small, arg.seed) == ("student_kd", True, 2)
  assert isinstance(arg.seed, int)


def test_parse_arg_empty_keeps_defaults():
  arg = config_lib.parse_arg("", run="student_kd", small=False, seed=0)
  assert (arg.run, arg.small, arg.seed) == ("student_kd", False, 0)


def test_parse_arg_bool_values():
  assert config_lib.parse_arg("small=true", small=False).small is True
  assert config_lib.parse_arg("small=0", small=True).small is False


def test_parse_arg_rejects_unknown_key():
  with pytest.raises(UserError, match="depth"):
    config_lib.parse_arg("depth=3", run="student_kd", small=False, seed=0)


def test_parse_arg_rejects_unknown_word_without_run():
  with pytest.raises(UserError, match="bogus"):
    config_lib.parse_arg("bogus", small=False, seed=0)


def test_parse_arg_rejects_a_mistyped_flag_before_the_run_name():
  with pytest.raises(UserError, match="smal"):
    config_lib.parse_arg("smal,teacher", run="student_kd", small=False, seed=0)


def test_parse_arg_rejects_a_badly_typed_value():
  with pytest.raises(UserError, match="seed"):
    config_lib.parse_arg("seed=abc", run="student_kd", small=False, seed=0)
  with pytest.raises(UserError, match="small"):
    config_lib.parse_arg("small=maybe", run="student_kd", small=False, seed=0)


# ----------------------------------------------------------------------------- Hinton 2015 configs

@pytest.mark.parametrize("run", hinton_config.RUNS)
@pytest.mark.parametrize("small", [False, True])
def test_hinton_configs_resolve(run, small):
  config = hinton_config.get_config(f"{run},small" if small else run)
  assert isinstance(config, ml_collections.ConfigDict)
  if run in ("student_kd", "student_omit3"):
    config.teacher.checkpoint = "/tmp/teacher"  # set on the command line in practice
  resolved = config_lib.resolve(config)
  assert resolved.dataset.name == ("mnist5k" if small else "mnist")
  assert resolved.num_epochs > 0 and resolved.batch_size == 128


def test_hinton_teacher_config():
  teacher = config_lib.resolve(hinton_config.get_config("teacher,small"))
  assert teacher.model.widths == (1200, 1200)
  assert (teacher.model.dropout_input, teacher.model.dropout_hidden) == (0.2, 0.5)
  assert teacher.dataset.translate_px == 2
  assert teacher.method.name == "supervised"


@pytest.mark.parametrize("run", ["student_hard", "student_kd", "student_omit3"])
def test_hinton_student_configs(run):
  config = hinton_config.get_config(f"{run},small,seed=3")
  config.teacher.checkpoint = "/tmp/teacher"
  student = config_lib.resolve(config)
  assert student.seed == 3
  assert student.model.widths == (800, 800)
  assert (student.model.dropout_input, student.model.dropout_hidden) == (0.0, 0.0)
  assert student.dataset.translate_px == 0
  if run == "student_hard":
    assert student.method.name == "supervised"
  else:
    assert student.method.name == "hinton_kd" and student.method.temperature == 20.0
    assert student.method.kd_weight == (0.9 if run == "student_kd" else 1.0)
    assert student.method.ce_weight == (0.1 if run == "student_kd" else 0.0)
    # The teacher it loads has the teacher's architecture.
    assert student.teacher.model.widths == (1200, 1200)
    assert student.teacher.model.dropout_input == 0.2
  if run == "student_omit3":
    assert student.dataset.exclude_labels == (3,)
    assert student.dataset.train_split == "train[:90%]"
  else:
    assert student.dataset.exclude_labels == ()


def test_hinton_config_rejects_unknown_run():
  with pytest.raises((UserError, ValueError), match="nonsense"):
    hinton_config.get_config("nonsense,small")
  with pytest.raises(UserError):
    hinton_config.get_config("teacher,temperature=3")


def test_hinton_config_keys_can_be_overridden_like_the_command_line():
  config = hinton_config.get_config("teacher,small")
  config.optimizer.lr = 3e-4  # what --config.optimizer.lr=3e-4 does
  assert config_lib.resolve(config).optimizer.lr == 3e-4


def _flat_keys(config, prefix=""):
  keys = set()
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
      keys |= _flat_keys(value, f"{prefix}{key}.")
    else:
      keys.add(prefix + key)
  return keys
