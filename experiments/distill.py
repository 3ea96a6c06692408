r"""Train or distil one model: the experiment script behind every paper folder.

  python -m experiments.distill --config=experiments/hinton2015/config.py:teacher,small \
      --workdir=/tmp/hinton/teacher
  python -m experiments.distill --config=experiments/hinton2015/config.py:student_kd,small \
      --config.teacher.checkpoint=/tmp/hinton/teacher --workdir=/tmp/hinton/student_kd

Any config key can be overridden (`--config.optimizer.lr=3e-4`); unknown keys and wrong types
fail at start-up. Re-running with the same --workdir resumes the run.
"""
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from research.errors import UserError
from research.train import logs
from research.train.loop import train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. path/config.py:arg.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Call jax.distributed.initialize() first.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logs.quiet_libraries()
  if _MULTIHOST.value:
    import jax  # pylint: disable=import-outside-toplevel
    jax.distributed.initialize()
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """absl's flag parsing, with config mistakes (unknown key, wrong type) as one clear error."""
  try:
    return flags.FLAGS(argv)
  except (flags.Error, UserError, AttributeError, KeyError, TypeError, ValueError) as e:
    message = " ".join(str(e).replace("\\n", " ").replace("\\", "").split())
    if isinstance(e, AttributeError):  # how ml_collections reports an unknown key
      typo = re.search(r'Did you mean "(\w+)" instead of "(\w+)"', message)
      key = typo.group(2) if typo else (re.findall(r"(\w+)", message) or ["?"])[0]
      given = [a.split("=")[0][2:] for a in argv
               if a.startswith("--config.") and a.split("=")[0].split(".")[-1] == key]
      message = f"unknown config key '{given[0] if given else key}'" + (
          f"; did you mean '{typo.group(1)}'?" if typo else ".")
    print(f"error: bad flag or config override: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
