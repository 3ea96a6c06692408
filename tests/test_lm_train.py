"""Language-model runs end to end through train_and_evaluate on the synthetic arithmetic task.

A tiny teacher is trained once per module; students distil it with on-policy GKD and DistiLLM's
replay buffer. Checked: the teacher learns (held-out NLL far below uniform), the teacher's workdir
stays byte-identical, a run cut back to its halfway checkpoint resumes bit-exactly (replay buffer,
generation count, RNG and data position included), init_from warm-starts, sequence-level KD data
written by experiments/label_with_teacher trains a student, and bad requests (vocabulary
mismatch, image model on text, a prompt longer than its columns, a checkpoint of another
architecture, on-policy sampling without prompts) fail with one clear error before the workdir
is touched.
"""
import hashlib
import json
import math
import pathlib
import shutil

import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments import label_with_teacher
from research import config as config_lib
from research import models
from research.data import text
from research.errors import UserError
from research.train import checkpoint
from research.train.loop import train_and_evaluate
from tree_asserts import assert_trees_bitwise_equal

MODEL = dict(name="decoder", dim=32, depth=1, num_heads=2, num_kv_heads=1, mlp_dim=64)
TEACHER = dict(name="decoder", dim=48, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=96)
STEPS = 6


def _config(data_dir, **overrides) -> dict:
  config = dict(dataset=dict(name="arithmetic", data_dir=data_dir, download=False, seq_len=16, prompt_len=9,
                             eval_split="test[:64]"),
                batch_size=16, eval_batch_size=64, num_steps=STEPS, log_every_steps=1,
                checkpoint_every_steps=STEPS // 2, parallel=dict(num_devices=1), model=MODEL,
                optimizer=dict(lr=3e-3))
  for key, value in overrides.items():
    config[key] = {**config[key], **value} if isinstance(value, dict) and key in config else value
  return config


def _hashes(directory: pathlib.Path) -> dict:
  return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def lm_data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("lm_tfds"))


@pytest.fixture(scope="module")
def teacher(lm_data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("lm_teacher")
  results = train_and_evaluate(_config(lm_data_dir, model=TEACHER, num_steps=150, checkpoint_every_steps=150),
                               str(workdir))
  return workdir, results


def _kd_config(data_dir, teacher_dir, **method):
  method = dict(name="token_kd", ce_weight=0.0, kd_weight=1.0, **method)
  return _config(data_dir, teacher=dict(checkpoint=str(teacher_dir), model=TEACHER), method=method)


def test_the_teacher_learns_the_task(teacher):
  _, results = teacher
  assert results["loss"] < 0.5 * math.log(259), results  # held-out NLL per completion token


def test_on_policy_replay_run_resumes_bit_exactly_and_leaves_the_teacher_untouched(
    teacher, lm_data_dir, tmp_path):
  teacher_dir, _ = teacher
  before = _hashes(teacher_dir)
  config = _kd_config(lm_data_dir, teacher_dir, divergence="skew_reverse_kl", on_policy_fraction=0.75,
                      replay_size=2, replay_fresh=0.5)
  full = tmp_path / "full"
  results = train_and_evaluate(config, str(full))
  assert _hashes(teacher_dir) == before
  half = STEPS // 2
  copy = tmp_path / "copy"
  shutil.copytree(full, copy)
  shutil.rmtree(copy / "checkpoints" / str(STEPS))
  (copy / "results.json").unlink()
  assert train_and_evaluate(config, str(copy)) == results
  item = lambda w, name: ocp.StandardCheckpointer().restore(w / "checkpoints" / str(STEPS) / name)
  for name in ("train", "variables"):
    assert_trees_bitwise_equal(item(copy, name), item(full, name), name)
  # Any kept step loads read-only by number (e.g. to evaluate a run's learning curve).
  student = models.build(config_lib.build(config).model, 259)
  halfway = checkpoint.load_model_variables(str(full), student, (16,), "run", np.int32, step=half)
  assert_trees_bitwise_equal(halfway, ocp.StandardCheckpointer().restore(full / "checkpoints" / str(half) / "variables"),
                             "variables at step 3")
  with pytest.raises(UserError, match="no step 5"):
    checkpoint.load_model_variables(str(full), student, (16,), "run", np.int32, step=5)
  state = item(full, "train")["method_state"]
  assert 0 < int(state["generations"]) <= STEPS and int(state["filled"]) >= 1
  lines = [json.loads(l) for l in (full / "metrics.jsonl").read_text().splitlines()]
  assert any(l.get("on_policy") == 1.0 for l in lines if l["split"] == "train")


def test_init_from_starts_the_student_at_another_runs_weights(teacher, lm_data_dir, tmp_path):
  teacher_dir, teacher_results = teacher
  config = _config(lm_data_dir, model=TEACHER, init_from=str(teacher_dir), num_steps=1,
                   optimizer=dict(lr=1e-9))
  results = train_and_evaluate(config, str(tmp_path / "warm"))
  np.testing.assert_allclose(results["loss"], teacher_results["loss"], rtol=1e-4)
  with pytest.raises(UserError, match="init_from run"):
    train_and_evaluate(_config(lm_data_dir, init_from=str(teacher_dir)), str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()


def test_sequence_level_kd_labels_a_dataset_the_student_trains_on(teacher, lm_data_dir, tmp_path):
  teacher_dir, _ = teacher
  count = label_with_teacher.label(str(teacher_dir), "arithmetic_seqkd_test", split="train[:64]",
                                   decode="greedy", batch_size=32)
  assert count == 64
  config = _config(lm_data_dir)
  config["dataset"]["name"] = "arithmetic_seqkd_test"
  config["dataset"]["eval_split"] = "train"
  rows = text.prompts(_resolved_dataset(config), "train")
  originals = text.prompts(_resolved_dataset(_config(lm_data_dir)), "train[:64]")
  assert [p for p, _ in rows] == [p for p, _ in originals]  # same prompts, the teacher's completions
  results = train_and_evaluate(config, str(tmp_path / "seqkd"))
  assert results["count"] > 0
  with pytest.raises(UserError, match="already exists"):
    label_with_teacher.label(str(teacher_dir), "arithmetic_seqkd_test", split="train[:8]", decode="greedy")


def _resolved_dataset(config):
  from research import config as config_lib  # pylint: disable=import-outside-toplevel
  return config_lib.resolve(config).dataset


@pytest.mark.parametrize("overrides, message", [
    (dict(teacher=dict(model=dict(TEACHER, vocab_size=300))), "vocabulary"),
    (dict(model=dict(name="mlp")), "holds text"),
    (dict(dataset=dict(prompt_len=4)), "prompt"),
    (dict(teacher=dict(model=dict(TEACHER, dim=64))), "shape"),
    (dict(dataset=dict(prompt_len=0)), "prompt_len"),
])
def test_bad_requests_fail_before_the_workdir_is_touched(teacher, lm_data_dir, tmp_path, overrides, message):
  teacher_dir, _ = teacher
  config = _kd_config(lm_data_dir, teacher_dir, on_policy_fraction=0.5)
  for key, value in overrides.items():
    config[key] = {**config[key], **value}
  workdir = tmp_path / "run"
  with pytest.raises(UserError, match=message):
    train_and_evaluate(config, str(workdir))
  assert not workdir.exists()
