r"""Sequence-level KD (Kim & Rush 2016): label a prompt/completion dataset with a teacher's outputs.

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

import ml_collections
import tensorflow_datasets as tfds

from research.data import builders
from research.errors import UserError
from research.eval import lm as lm_eval


def _builder_class(name: str, examples: list):
  """A TFDS builder named `name` whose one 'train' split is `examples` (dicts of strings)."""

  class Labelled(tfds.core.GeneratorBasedBuilder):
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
  if exists(output, data_dir):
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
  _builder_class(output, examples)(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return len(examples)


def exists(name: str, data_dir: str) -> bool:
  """Whether dataset `name` is prepared in `data_dir`."""
  try:
    return tfds.builder(name, data_dir=data_dir).is_prepared()
  except Exception:  # pylint: disable=broad-except  # not registered and not on disk
    return False


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=import-outside-toplevel

  flags.DEFINE_string("teacher", None, "Workdir of a finished language-model teacher run.")
  flags.DEFINE_string("output", None, "Name of the TFDS dataset to write.")
  flags.DEFINE_string("split", "", "Split to label; default the teacher run's train split.")
  flags.DEFINE_enum("decode", "beam", ["beam", "greedy", "sample"], "How the teacher decodes.")
  flags.DEFINE_integer("beam_size", 5, "Beams for --decode=beam.")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature for --decode=sample.")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_string("data_dir", "", "TFDS data dir; default the teacher run's.")
  flags.mark_flags_as_required(["teacher", "output"])
  FLAGS = flags.FLAGS

  def main(argv):
    del argv
    try:
      n = label(FLAGS.teacher, FLAGS.output, FLAGS.split, FLAGS.decode, FLAGS.beam_size,
                FLAGS.temperature, FLAGS.seed, FLAGS.data_dir)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    print(f"wrote {n} examples to dataset {FLAGS.output}")

  app.run(main)
