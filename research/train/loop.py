"""`train_and_evaluate(config, workdir)`: the one trainer every experiment runs.

mesh → data → teacher (frozen, read-only) → student state (fresh or resumed) → jitted steps
→ metrics, evaluation and checkpoints → final evaluation. A config without a teacher is plain
supervised training, which is how teachers are made. Re-running with the same workdir resumes;
a finished run returns its final metrics without training again.
"""
import json
import math
import pathlib
import time

import grain
import jax
import ml_collections
import numpy as np
from absl import logging

from research import config as config_lib
from research import methods, models
from research.data import pipeline, text
from research.errors import UserError
from research.methods import lm, taps
from research.teachers import cache as cache_lib, signal as signal_lib
from research.train import checkpoint, ledger as ledger_lib, lm_step, optimizer, parallel, step as step_lib
from research.train.metrics import MetricWriter, Progress
from research.train.state import TrainState, init_variables

# Keys that may change between a run and its resumption without changing its results.
_RESUMABLE_CHANGES = ("log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints")


def schedule(config: ml_collections.ConfigDict, num_examples: int) -> dict:
  """Resolves durations written in epochs into steps."""
  steps_per_epoch = max(num_examples // config.batch_size, 1)
  total = config.num_steps if config.num_steps > 0 else math.ceil(config.num_epochs * steps_per_epoch)
  every = lambda v: v if v > 0 else steps_per_epoch
  return {"steps_per_epoch": steps_per_epoch, "total_steps": total,
          "eval_every": every(config.eval_every_steps), "checkpoint_every": every(config.checkpoint_every_steps)}


def _same_config(config, workdir: pathlib.Path) -> bool:
  """True if workdir has no run yet or one with this config; a different run's config raises."""
  path = workdir / "config.json"
  if not path.exists():
    return not (workdir / "results.json").exists()  # results without their config: not ours to reuse
  saved, current = json.loads(path.read_text()), json.loads(config.to_json())
  changed = sorted(k for k in set(saved) | set(current)
                   if saved.get(k) != current.get(k) and k not in _RESUMABLE_CHANGES)
  if changed:
    raise UserError(f"--workdir {workdir} holds a run with a different config (keys {changed}); "
                    "resume it with the same config or use a new --workdir.")
  return True


def _write_config(config, workdir: pathlib.Path) -> None:
  """Saves config.json (refusing to overwrite a different run's)."""
  _same_config(config, workdir)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(json.dumps(json.loads(config.to_json()), indent=2))


class _Modality:
  """What differs between image classification and language modelling: the data module
  (research/data/pipeline.py or text.py), the input dtype, the method and the steps."""

  def __init__(self, config):
    self.is_text = text.is_text(config.dataset)
    self.data = text if self.is_text else pipeline
    self.dtype = np.int32 if self.is_text else np.float32
    self.vocab_size = text.tokenizer(config.dataset).vocab_size if self.is_text else 0
    is_decoder = config.model.name == "decoder"
    if self.is_text != is_decoder:
      raise UserError(f"Dataset '{config.dataset.name}' holds {'text' if self.is_text else 'images'} "
                      f"but config.model.name={config.model.name!r} is "
                      f"{'an image model' if is_decoder is False else 'a language model'}: use "
                      f"{'model.name=decoder' if self.is_text else 'an image model'} with this dataset.")


def _teacher_models(config, vocab_size: int = 0) -> tuple:
  """The teacher models: config.teacher.model, then each ensemble member's model from its run's config.json."""
  if not config.teacher.checkpoint:
    return ()
  models_ = [models.build(config.teacher.model, vocab_size)]
  for member in config.teacher.ensemble:
    path = pathlib.Path(member).expanduser() / "config.json"
    if not path.exists():
      raise UserError(f"config.teacher.ensemble member {member} has no config.json: point it at the "
                      "workdir of a finished training run.")
    models_.append(models.build(config_lib.build({"model": json.loads(path.read_text())["model"]}).model))
  return tuple(models_)


def _load_teachers(config, teachers, workdir: pathlib.Path, example_shape, engine, dtype) -> tuple:
  """Every teacher's variables, read-only, replicated over the devices."""
  variables = []
  for teacher, path in zip(teachers, (config.teacher.checkpoint,) + tuple(config.teacher.ensemble)):
    teacher_path = pathlib.Path(path).expanduser().absolute()
    if teacher_path == workdir or workdir in teacher_path.parents:
      raise UserError(f"The teacher checkpoint {teacher_path} lies inside the student's --workdir; "
                      "the teacher must live in its own workdir (it is read-only here).")
    variables.append(checkpoint.load_model_variables(str(teacher_path), teacher, example_shape, "teacher",
                                                     dtype))
  return engine.put_replicated(tuple(variables))


def _shapes(model, example_shape, dtype=np.float32) -> dict:
  variables = jax.eval_shape(lambda: init_variables(model, example_shape, jax.random.PRNGKey(0), dtype))
  return taps.available(model, variables, example_shape, dtype)


def _check_language_models(config, student, teachers) -> None:
  """Start-up checks of a language-model run: one teacher with the student's vocabulary, and
  prompts to sample from when the method samples."""
  if config.teacher.ensemble:
    raise UserError("config.teacher.ensemble is for image classifiers; language-model runs take one "
                    "teacher (config.teacher.checkpoint).")
  if teachers and teachers[0].vocab_size != student.vocab_size:
    raise UserError(f"The teacher's vocabulary ({teachers[0].vocab_size} tokens) differs from the "
                    f"student's ({student.vocab_size}): cross-tokenizer distillation is not supported. "
                    "Give both config.model.vocab_size and config.teacher.model.vocab_size the same "
                    "value (0 = the dataset tokenizer's).")
  if config.method.on_policy_fraction and config.dataset.prompt_len <= 0:
    raise UserError("config.method.on_policy_fraction > 0 samples completions from prompts, but "
                    "config.dataset.prompt_len=0 (plain text rows); set dataset.prompt_len > 0.")


def _open_cache(config, modality) -> tuple:
  """(arrays to train on, labelling ledger) of config.teacher.cache, checked against the run: the
  method must consume the cache's access level at its temperature, the dataset layout (tokenizer,
  row shape, image shape) must be the one it was labelled on, and a named teacher must be its author."""
  if config.teacher.ensemble:
    raise UserError("config.teacher.cache replaces the teacher; remove config.teacher.ensemble.")
  if config.method.on_policy_fraction:
    raise UserError("A teacher cache holds the teacher's signal on the cached rows only, not on the "
                    "student's own samples: set config.method.on_policy_fraction=0 (on-policy "
                    "distillation needs the teacher in memory, config.teacher.checkpoint).")
  arrays, provenance, labelling = cache_lib.load(config.teacher.cache, config.dataset.data_dir)
  digest = signal_lib.checkpoint_digest(config.teacher.checkpoint) if config.teacher.checkpoint else ""
  signal_lib.check(provenance, config.method.name, config.method.temperature,
                   cache_lib.layout(config.dataset), digest)
  keep = (text.KEYS if modality.is_text else ("image", "label")) + signal_lib.FIELDS[provenance.level]
  return {k: arrays[k] for k in keep}, labelling


def _log_train(writer, progress, step: int, metrics) -> None:
  metrics = jax.device_get(metrics)
  if not np.isfinite(metrics["loss"]):
    raise FloatingPointError(f"Training loss is {metrics['loss']} at step {step}; lower "
                             "config.optimizer.lr or set config.optimizer.grad_clip_norm. The last "
                             "checkpoint before it is kept in the workdir.")
  writer.write(step, "train", metrics)
  progress.log(step, metrics)


def _teacher_flops(teachers, teacher_variables, batch, modality) -> float:
  """The in-memory teachers' forward FLOPs on one global batch (0 without one; `batch` is this
  host's): the teacher's share of the step, for the ledger."""
  if not teachers:
    return 0.0
  if modality.is_text:
    forward = lambda v, b: teachers[0].apply(v[0], b["tokens"], b["segment_ids"], b["positions"])
  else:
    forward = lambda v, b: step_lib.teacher_forward(teachers, v, b.get("teacher_image", b["image"]), (), 1.0)
  return ledger_lib.lowered_flops(jax.jit(forward), (teacher_variables, batch), jax.process_count())


def evaluate(engine, eval_step, variables, dataset_config, split: str, batch_size: int,
             data=pipeline) -> dict:
  """Accuracy, errors, loss and count of the model over the whole `split` (exact, padded batches);
  for language models per target token: next-token accuracy and NLL (nats)."""
  totals = None
  for batch in data.eval_batches(dataset_config, split, batch_size):
    sums = eval_step(variables, engine.put_batch(batch))
    totals = sums if totals is None else jax.tree.map(lambda a, b: a + b, totals, sums)
  totals = jax.device_get(totals)
  count = float(totals["count"])
  return {"accuracy": float(totals["correct"]) / count, "errors": count - float(totals["correct"]),
          "loss": float(totals["loss"]) / count, "count": count}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or resumes, or finds finished) the run in `workdir`; returns the final eval metrics."""
  config = config_lib.resolve(config)
  workdir = pathlib.Path(workdir).expanduser().absolute()
  # Everything that can be wrong with the request is checked before the workdir is touched.
  devices = parallel.select_devices(config.parallel.num_devices)
  engine = parallel.make_engine(config.parallel.mode, devices)
  parallel.check_batch_size(config.batch_size, engine.num_devices)
  parallel.check_batch_size(config.eval_batch_size, engine.num_devices, "eval_batch_size")
  modality = _Modality(config)
  data = modality.data
  build_method = lm.build if modality.is_text else methods.build
  build_method(config.method)  # the method's own settings, before any data is read
  student = models.build(config.model, modality.vocab_size)
  example_shape = data.example_shape(config.dataset)
  if config.teacher.checkpoint and config.method.name in config_lib.TEACHERLESS and not config.teacher.cache:
    raise UserError(f"method '{config.method.name}' does not use a teacher; remove "
                    f"config.teacher.checkpoint={config.teacher.checkpoint!r} or pick a distillation method.")
  if config.teacher.ensemble and config.method.name != "hinton_kd":
    raise UserError("config.teacher.ensemble averages the teachers' probabilities, which only "
                    f"method 'hinton_kd' uses; method '{config.method.name}' takes one teacher.")
  cached, labelling = _open_cache(config, modality) if config.teacher.cache else (None, {})
  teachers = () if cached is not None else _teacher_models(config, modality.vocab_size)
  num_train = len(next(iter(cached.values()))) if cached else data.num_train_examples(config)
  if modality.is_text:
    _check_language_models(config, student, teachers)
    method = lm.build(config.method)
    student_shapes = teacher_shapes = {}
  else:
    student_shapes = _shapes(student, example_shape)
    teacher_shapes = _shapes(teachers[0], example_shape) if teachers else {}
    method = methods.build(config.method, student_shapes, teacher_shapes, num_train)
  teacher_variables = _load_teachers(config, teachers, workdir, example_shape, engine, modality.dtype)
  init_from = {}
  if config.init_from:  # read-only, like a teacher; checked against the student's architecture
    init_from = checkpoint.load_model_variables(str(pathlib.Path(config.init_from).expanduser()), student,
                                                example_shape, "init_from run", modality.dtype)
  if (workdir / "results.json").exists() and _same_config(config, workdir):
    logging.info("%s is finished; returning its results.json.", workdir)
    return json.loads((workdir / "results.json").read_text())
  plan = schedule(config, num_train)
  total_steps = plan["total_steps"]
  tx = optimizer.build(config.optimizer, total_steps)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_config(config, workdir)

  init_rng, state_rng = jax.random.split(jax.random.PRNGKey(config.seed))
  if modality.is_text:
    adapters, method_state = {}, method.init_state(config.batch_size, config.dataset.seq_len)
  else:
    adapters, method_state = method.init(jax.random.fold_in(init_rng, 1), student_shapes, teacher_shapes)
  variables = {**init_variables(student, example_shape, init_rng, modality.dtype), **init_from}
  host_state = jax.device_get(TrainState.create(variables, tx, state_rng, adapters, method_state))
  ckpt = checkpoint.Checkpointer(str(workdir), config.keep_checkpoints)
  train_data = (pipeline.array_dataset(cached, config.batch_size, config.seed, "The teacher cache")
                if cached is not None else data.train_dataset(config, config.batch_size, seed=config.seed))
  train_data = train_data.to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=16))
  train_iter = iter(train_data)
  if ckpt.latest_step() is not None:
    host_state, data_state = ckpt.restore(host_state)
    train_iter.set_state(data_state)
    logging.info("Resumed %s at step %d.", workdir, int(host_state.step))
  first_step = int(host_state.step)
  state = engine.put_replicated(host_state)

  if modality.is_text:
    tokenizer = text.tokenizer(config.dataset)
    train_step = engine.compile_train(lm_step.make_train_step(
        student, teachers[0] if teachers else None, method, tx, config.dataset.prompt_len,
        tokenizer.pad_id, tokenizer.eos_id))
    eval_step = engine.compile_eval(lm_step.make_eval_step(student))
  else:
    train_step = engine.compile_train(step_lib.make_train_step(student, teachers, method, tx))
    eval_step = engine.compile_eval(step_lib.make_eval_step(student))
  run_eval = lambda variables: evaluate(engine, eval_step, variables, config.dataset,
                                        config.dataset.eval_split, config.eval_batch_size, data)
  writer = MetricWriter(str(workdir))
  progress = Progress(first_step, total_steps)
  logging.info("Training %s for %d steps (%d per epoch) on %d devices (%s), from step %d.",
               config.model.name, total_steps, plan["steps_per_epoch"], engine.num_devices,
               config.parallel.mode, first_step)
  ledger = {**ledger_lib.load(str(workdir)), "labelling": labelling}
  session_start, session_steps = time.time(), 0
  pending = None  # (step, metrics) of the previous step: read after the next one is dispatched
  for step in range(first_step + 1, total_steps + 1):
    host_batch = next(train_iter)
    batch = engine.put_batch(host_batch)
    if "step_flops" not in ledger:
      ledger.update(step_flops=ledger_lib.lowered_flops(train_step, (state, teacher_variables, batch),
                                                        engine.num_devices),
                    teacher_step_flops=_teacher_flops(teachers, engine.unreplicate(teacher_variables),
                                                      host_batch, modality))
    state, metrics = train_step(state, teacher_variables, batch)
    session_steps += 1
    if pending is not None:
      _log_train(writer, progress, *pending)
      pending = None
    if step % config.log_every_steps == 0 or step == total_steps:
      pending = (step, metrics)
    if step % plan["eval_every"] == 0 and step != total_steps:
      writer.write(step, "eval", run_eval(engine.unreplicate(state).variables))
    if step % plan["checkpoint_every"] == 0 or step == total_steps:
      ckpt.save(step, engine.unreplicate(state), train_iter.get_state())
      ledger_lib.save(str(workdir), {**ledger, "steps": step, "wall_seconds": ledger.get("wall_seconds", 0.0)
                                     + time.time() - session_start})
  if pending is not None:
    _log_train(writer, progress, *pending)

  final = run_eval(engine.unreplicate(state).variables)
  writer.write(total_steps, "eval", final)
  final["step"] = total_steps
  logging.info("Final eval on %s: %s", config.dataset.eval_split, final)
  ckpt.wait()
  ckpt.close()
  writer.close()
  if jax.process_index() == 0:
    (workdir / "results.json").write_text(json.dumps(final, indent=2))
  return final
