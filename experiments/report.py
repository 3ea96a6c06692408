"""What every reproduction script shares: its common flags, its main, and writing its results
(results.json, the markdown table and the PNG plot)."""
import json
import pathlib
import sys

from absl import flags, logging

from research.errors import UserError
from research.train import logs


def write(results: dict, workdir: str, markdown, plot) -> str:
  """Writes workdir/results.{json,md,png} with `markdown(results)` (the table) and `plot(results)`
  (a matplotlib figure, from `pyplot()`); returns the markdown table."""
  root = pathlib.Path(workdir)
  (root / "results.json").write_text(json.dumps(results, indent=2))
  table = markdown(results)
  (root / "results.md").write_text(table)
  fig = plot(results)
  fig.tight_layout()
  fig.savefig(str(root / "results.png"), dpi=100)
  pyplot().close(fig)
  return table


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display), for the plot functions."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def verdict(holds: bool) -> str:
  return "**PASS**" if holds else "**NOT REPRODUCED**"


def claims_table(claims: dict, issue: int, numbers: str = "numbers") -> list:
  """Markdown lines of the claims table: claim key, paper, the numbers it was decided on, verdict."""
  lines = [f"| claim (issue #{issue}) | paper | {numbers} | verdict |", "|---|---|---|---|"]
  return lines + [f"| {key} | {c['paper']} | {c['detail']} | {verdict(c['holds'])} |" for key, c in claims.items()]


def cache_compilations(workdir: str) -> None:
  """Keeps XLA's compiled programs under workdir/jax_cache, so re-running a reproduction (or its
  many runs of the same shapes) compiles each program once."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_compilation_cache_dir", str(pathlib.Path(workdir) / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


def define_flags(workdir: str, num_devices: int = 1) -> None:
  """--workdir, --seeds, --data_dir, --num_devices. Call it only under `if __name__ == "__main__"`,
  so tests can import several reproduction modules side by side."""
  flags.DEFINE_string("workdir", workdir, "Root folder of all runs.")
  flags.DEFINE_list("seeds", ["0", "1", "2"], "Student seeds.")
  flags.DEFINE_string("data_dir", "", "TFDS data dir ('' = default).")
  flags.DEFINE_integer("num_devices", num_devices, "Devices per run (-1 = all).")


def seeds() -> list:
  return [int(s) for s in flags.FLAGS.seeds]


def main(compute, write_results) -> None:
  """Runs `compute()` -> results, writes them with `write_results(results, --workdir)` and prints
  the table; a UserError is one line on stderr and exit status 2."""
  logs.quiet_libraries()
  workdir = flags.FLAGS.workdir
  try:
    results = compute()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(write_results(results, workdir))
  logging.info("Wrote results.{json,md,png} to %s", workdir)
