"""Writing a reproduction's results: results.json, the markdown table and the PNG plot."""
import json
import pathlib


def write(results: dict, workdir: str, markdown, plot) -> str:
  """Writes workdir/results.{json,md,png} with `markdown(results)` and `plot(results, path)`;
  returns the markdown table."""
  root = pathlib.Path(workdir)
  (root / "results.json").write_text(json.dumps(results, indent=2))
  table = markdown(results)
  (root / "results.md").write_text(table)
  plot(results, str(root / "results.png"))
  return table
