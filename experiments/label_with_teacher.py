r"""Label a dataset with a teacher: a teacher cache at any access level, or sequence-level KD text.

Teacher cache (issue 5): what a teacher reveals at one access level (research/teachers/signal.py),
written once as a TFDS dataset (research/teachers/cache.py) that students train from with no
teacher in memory (config.teacher.cache=NAME):

  python -m experiments.label_with_teacher --teacher=/tmp/t --level=topk --top_k=20 --output=kjv_top20
  python -m experiments.label_with_teacher --api_url=http://127.0.0.1:8000/v1 --api_model=t \
      --config=experiments/api2025/config.py:lm_student --level=topk --top_k=5 --output=kjv_api_top5 \
      --max_queries=2000 --api_cache=/tmp/kjv_api.sqlite

--teacher labels in process (every level); --api_url through an OpenAI-compatible API (levels
topk ≤ 20, sample, text for LMs; logits, topk, text for classifiers) with a query/token budget and
an on-disk response cache, so a crashed or budget-stopped run, rerun, pays only for what is new.
The rows (text) or images come from --config's dataset (default: the teacher run's), split
--split, the first --limit of them (0 = all).

Sequence-level KD (Kim & Rush 2016), --level=decode (the default without --level):

  python -m experiments.label_with_teacher --teacher=/tmp/kr/teacher --output=styled_seq2seq_seqkd \
      --decode=beam --beam_size=5

reads the prompts of the teacher run's dataset (--split, default its train split), decodes the
teacher's completion of each (beam search, greedy or sampling) and writes a TFDS dataset named
--output into the same data dir, with features {'prompt', 'completion' (the teacher's),
'reference' (the dataset's own completion)}. A student then trains on it by name
(--config.dataset.name=styled_seq2seq_seqkd) with method 'supervised': that is sequence-level KD.
TFDS writes into a temporary folder and renames it when done, so a failed run leaves nothing.
"""
import sys
import time

import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from research.data import builders, pipeline, sources, text
from research.errors import UserError
from research.eval import lm as lm_eval
from research.teachers import cache, codec, signal


def _builder_class(name: str, examples: list):
  """A TFDS builder named `name` whose one 'train' split is `examples` (dicts of strings)."""

  class Labelled(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      features = {k: tfds.features.Text() for k in ("prompt", "completion", "reference")}
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                   description="Completions decoded by a teacher (sequence-level KD).",
                                   disable_shuffling=True)  # the source split's order

    def _split_generators(self, dl_manager):
      return {"train": self._generate_examples()}

    def _generate_examples(self):
      yield from enumerate(examples)

  with tfds.core.registered.skip_registration():
    return type(f"Labelled_{name}", (Labelled,), {"name": name})


def label(teacher_workdir: str, output: str, split: str = "", decode: str = "beam", beam_size: int = 5,
          temperature: float = 1.0, seed: int = 0, data_dir: str = "", batch_size: int = 64) -> int:
  """Writes dataset `output` (see the module docstring); returns the number of examples."""
  if decode not in ("beam", "greedy", "sample"):
    raise UserError(f"--decode={decode!r} must be beam, greedy or sample.")
  config, model, variables = lm_eval.load_run(teacher_workdir)
  dataset = ml_collections.ConfigDict(config.dataset.to_dict())
  dataset.data_dir = data_dir or dataset.data_dir
  data_dir = dataset.data_dir or builders.default_data_dir()
  if sources.is_prepared(output, data_dir):  # before the (slow) decoding; write_examples checks too
    raise UserError(f"Dataset '{output}' already exists in {data_dir}; pick another --output or delete it.")
  if dataset.prompt_len <= 0:
    raise UserError(f"The teacher run's dataset '{dataset.name}' has no prompts (dataset.prompt_len=0); "
                    "sequence-level KD labels prompt/completion datasets.")
  pairs, outputs = lm_eval.decode_texts(model, variables, dataset, split or dataset.train_split, seed=seed,
                                        batch_size=batch_size,
                                        temperature=0.0 if decode == "greedy" else temperature,
                                        beam_size=beam_size if decode == "beam" else 0)
  examples = [{"prompt": prompt, "completion": output, "reference": reference}
              for (prompt, reference), output in zip(pairs, outputs)]
  return write_examples(output, examples, data_dir)


def write_examples(name: str, examples: list, data_dir: str) -> int:
  """Writes TFDS dataset `name` (split 'train', in order) of {'prompt', 'completion', 'reference'}
  strings, e.g. a teacher's rejection-sampled solutions; returns the number of examples."""
  if sources.is_prepared(name, data_dir):
    raise UserError(f"Dataset '{name}' already exists in {data_dir}; pick another name or delete it.")
  _builder_class(name, examples)(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return len(examples)


def label_cache(teacher, dataset_config, output: str, level: str, top_k: int = 0, temperature: float = 1.0,
                top_p: float = 1.0, split: str = "", limit: int = 0, views: int = 1, seed: int = 0,
                batch_size: int = 64) -> signal.Provenance:
  """Writes teacher cache `output` of `teacher` (research/teachers/access.py: LocalTeacher or
  ApiTeacher) over `dataset_config`'s split at `level`; returns its provenance. Nothing is written
  unless every example was labelled (a budget stop raises first; the API client keeps the answers)."""
  if level not in signal.LEVELS:
    raise UserError(f"--level={level!r} must be one of {', '.join(signal.LEVELS)} (or decode).")
  if (level == "topk") != (top_k > 0):
    raise UserError(f"--top_k={top_k} goes with --level=topk (k ≥ 1) only.")
  if top_k > codec.MAX_VOCAB:
    raise UserError(f"--top_k={top_k} exceeds the codec's vocabulary limit {codec.MAX_VOCAB}.")
  data_dir = dataset_config.data_dir or builders.default_data_dir()
  if cache.exists(output, data_dir):
    raise UserError(f"Dataset '{output}' already exists in {data_dir}; pick another --output or delete it.")
  if level == "logits" and temperature != 1.0:
    raise UserError(f"--level=logits at --temperature={temperature}: full log-probs are cached at temperature 1 "
                    "and the student re-tempers them (config.method.temperature); use --temperature=1.")
  split = split or dataset_config.train_split
  started, used_before = time.time(), dict(teacher.usage)
  if text.is_text(dataset_config):
    arrays = _label_text(teacher, dataset_config, split, limit, level, top_k, temperature, top_p, seed,
                         batch_size)
  else:
    arrays = _label_images(teacher, dataset_config, split, limit, views, level, top_k, temperature, seed)
  examples = len(next(iter(arrays.values())))
  provenance = signal.Provenance(
      level=level, teacher=teacher.name, digest=teacher.digest, source=teacher.source,
      dataset={**cache.layout(dataset_config), "split": split}, top_k=top_k, temperature=temperature,
      sampling={"top_p": top_p, "seed": seed, "views": views} if level in ("sample", "text") or views > 1 else {},
      examples=examples)
  ledger = {**{k: v - used_before.get(k, 0) for k, v in teacher.usage.items()},  # this cache's share
            "examples": examples, "seconds": time.time() - started}
  cache.write(output, arrays, provenance, ledger, data_dir)
  return provenance


def _label_text(teacher, dataset_config, split, limit, level, top_k, temperature, top_p, seed, batch_size):
  rows = dict(text.rows(dataset_config, split))
  count = min(limit or len(rows["tokens"]), len(rows["tokens"]))
  rows = {k: np.array(v[:count]) for k, v in rows.items()}
  arrays = {**rows, "source_index": np.arange(count, dtype=np.int32)}
  if level == "logits":
    arrays["signal_log_probs"] = teacher.score(rows, 0, batch_size).astype(np.float16)
  elif level == "topk":
    if temperature != 1.0:
      raise UserError("Top-k scoring of given text is at the teacher's temperature 1; use --temperature=1.")
    arrays["signal_topk"] = codec.encode_topk(*teacher.score(rows, top_k, batch_size))
  else:
    prompt_len = int(dataset_config.prompt_len)
    if prompt_len <= 0:
      raise UserError(f"Level {level!r} has the teacher write the completions of prompts, but the dataset "
                      "has dataset.prompt_len=0; set it (e.g. half of seq_len) in --config.")
    tok = text.tokenizer(dataset_config)
    out = teacher.continue_rows(rows, prompt_len, temperature, top_p, seed, tok.eos_id, tok.pad_id, batch_size)
    arrays.update({k: out[k] for k in text.KEYS})
    if level == "sample":  # position t carries the log-prob of token t + 1
      arrays["signal_log_prob"] = np.concatenate([out["sample_log_probs"][:, 1:],
                                                  np.zeros((count, 1), np.float32)], axis=1)
  return arrays


def _label_images(teacher, dataset_config, split, limit, views, level, top_k, temperature, seed):
  source = sources.ArraySource.from_tfds(sources.open_split(dataset_config.name, split, dataset_config.data_dir,
                                                            dataset_config.download))
  count = min(limit or len(source), len(source))
  if views < 1:
    raise UserError(f"--views={views}: at least 1 (view 0 is the clean image).")
  index = np.repeat(np.arange(count), views)
  view = np.tile(np.arange(views), count)
  images = np.array(source.images[index])
  px, hflip = int(dataset_config.translate_px), bool(dataset_config.hflip)
  if views > 1 and not (px or hflip):
    raise UserError("--views > 1 needs augmentation in --config (dataset.translate_px or dataset.hflip).")
  for i in np.flatnonzero(view > 0):  # view v of example n: augmentation drawn from (seed, n, v)
    rng = np.random.default_rng([seed, int(index[i]), int(view[i])])
    if px:
      images[i] = pipeline.shift(images[i:i + 1], px, pipeline.random_offsets(rng, px, 1))[0]
    if hflip and rng.random() < 0.5:
      images[i] = images[i, :, ::-1]
  arrays = {"image": images, "label": source.labels[index].astype(np.int32),
            "source_index": index.astype(np.int32), "view": view.astype(np.int32)}
  if level == "logits":
    arrays["signal_log_probs"] = teacher.classify(images, temperature, 0).astype(np.float16)
  elif level == "topk":
    arrays["signal_topk"] = codec.encode_topk(*teacher.classify(images, temperature, top_k))
  else:  # the label the student learns from is the teacher's: its top-1, or a draw from it
    if level == "text":
      arrays["label"] = teacher.classify(images, temperature, 1)[0][:, 0].astype(np.int32)
    else:
      log_probs = teacher.classify(images, temperature, 0).astype(np.float64)
      rng = np.random.default_rng(seed)
      draws = (rng.random((len(images), 1)) > np.cumsum(np.exp(log_probs), 1)).sum(1)
      draws = np.minimum(draws, log_probs.shape[1] - 1)
      arrays["label"] = draws.astype(np.int32)
      arrays["signal_log_prob"] = log_probs[np.arange(len(images)), draws].astype(np.float32)
  return arrays


def _dataset_config(config_spec: str, teacher_workdir: str, data_dir: str):
  """The dataset to label: --config's (a config file[:arg], as experiments/distill.py takes) or the
  teacher run's."""
  from research import config as config_lib  # pylint: disable=import-outside-toplevel
  if config_spec:
    import importlib.util  # pylint: disable=import-outside-toplevel
    path, _, arg = config_spec.partition(":")
    spec = importlib.util.spec_from_file_location("labelling_config", path)
    if spec is None:
      raise UserError(f"--config={config_spec}: no config file at {path}.")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = config_lib.resolve(module.get_config(arg or None))
  elif teacher_workdir:
    import json, pathlib  # pylint: disable=import-outside-toplevel,multiple-imports
    config = config_lib.resolve(json.loads((pathlib.Path(teacher_workdir) / "config.json").read_text()))
  else:
    raise UserError("Give --config (whose dataset to label) when labelling through --api_url.")
  dataset = ml_collections.ConfigDict(config.dataset.to_dict())
  dataset.data_dir = data_dir or dataset.data_dir
  return dataset


def teacher_for(teacher_workdir: str = "", api_url: str = "", api_model: str = "", tokenizer=None, **client):
  """A LocalTeacher for a workdir, or an ApiTeacher over a TeacherClient(api_url, api_model, **client)."""
  from research.teachers import access, client as client_lib  # pylint: disable=import-outside-toplevel
  if bool(teacher_workdir) == bool(api_url):
    raise UserError("Give exactly one of --teacher (a run workdir, in process) and --api_url (an API).")
  if teacher_workdir:
    return access.LocalTeacher(teacher_workdir)
  if not api_model:
    raise UserError("--api_url needs --api_model (the model id the API serves; see GET /v1/models).")
  return access.ApiTeacher(client_lib.TeacherClient(api_url, api_model, **client), tokenizer)


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("teacher", "", "Workdir of a finished teacher run (labels in process).")
  flags.DEFINE_string("api_url", "", "Base URL of an OpenAI-compatible teacher API, e.g. http://127.0.0.1:8000/v1.")
  flags.DEFINE_string("api_model", "", "The API's model id.")
  flags.DEFINE_string("output", None, "Name of the TFDS dataset to write.")
  flags.DEFINE_enum("level", "decode", ["decode"] + list(signal.LEVELS),
                    "decode: sequence-level KD text; else a teacher cache at that access level.")
  flags.DEFINE_integer("top_k", 0, "Entries per position for --level=topk.")
  flags.DEFINE_string("config", "", "Config file[:arg] whose dataset to label (default: the teacher run's).")
  flags.DEFINE_string("split", "", "Split to label; default the dataset's train split.")
  flags.DEFINE_integer("limit", 0, "Label only the first N rows / images (0 = all).")
  flags.DEFINE_integer("views", 1, "Images: augmented views per image (view 0 is the clean one).")
  flags.DEFINE_enum("decode", "beam", ["beam", "greedy", "sample"], "How the teacher decodes (--level=decode).")
  flags.DEFINE_integer("beam_size", 5, "Beams for --decode=beam.")
  flags.DEFINE_float("temperature", 1.0, "The teacher's temperature (sampling, classifier log-probs).")
  flags.DEFINE_float("top_p", 1.0, "Nucleus sampling for --level=sample/text.")
  flags.DEFINE_integer("seed", 0, "Sampling / augmentation seed.")
  flags.DEFINE_string("data_dir", "", "TFDS data dir; default the dataset config's.")
  flags.DEFINE_integer("max_queries", 0, "API budget: successful requests (0 = unlimited).")
  flags.DEFINE_integer("max_tokens", 0, "API budget: tokens (images for classifiers) (0 = unlimited).")
  flags.DEFINE_string("api_cache", "", "sqlite file of API responses (resume without re-paying).")
  flags.DEFINE_integer("concurrency", 4, "Concurrent API requests.")
  flags.DEFINE_float("requests_per_second", 0.0, "API rate limit (0 = none).")
  flags.mark_flags_as_required(["output"])
  FLAGS = flags.FLAGS

  def main(argv):
    del argv
    try:
      if FLAGS.level == "decode":
        n = label(FLAGS.teacher, FLAGS.output, FLAGS.split, FLAGS.decode, FLAGS.beam_size,
                  FLAGS.temperature, FLAGS.seed, FLAGS.data_dir)
        print(f"wrote {n} examples to dataset {FLAGS.output}")
        return
      dataset = _dataset_config(FLAGS.config, FLAGS.teacher, FLAGS.data_dir)
      tok = text.tokenizer(dataset) if text.is_text(dataset) else None
      teacher = teacher_for(FLAGS.teacher, FLAGS.api_url, FLAGS.api_model, tok,
                            cache_path=FLAGS.api_cache or None, max_queries=FLAGS.max_queries or None,
                            max_tokens=FLAGS.max_tokens or None, concurrency=FLAGS.concurrency,
                            requests_per_second=FLAGS.requests_per_second or None)
      provenance = label_cache(teacher, dataset, FLAGS.output, FLAGS.level, FLAGS.top_k, FLAGS.temperature,
                               FLAGS.top_p, FLAGS.split, FLAGS.limit, FLAGS.views, FLAGS.seed)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    print(f"wrote {provenance.examples} examples to teacher cache {FLAGS.output} (level {provenance.level}); "
          f"ledger: {teacher.usage}")

  app.run(main)
