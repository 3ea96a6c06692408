r"""Small-scale char-LM reproduction of GKD, MiniLLM (b) and DistiLLM (b) on the KJV, 3 seeds.

  python -m experiments.gkd2024.reproduce --workdir=/tmp/distillery/gkd2024

Trains (or resumes) the runs of experiments/gkd2024/config.py — one teacher; per seed an SFT warm
start and six arms that continue from it — then evaluates every arm the same way and writes
results.{json,md,png}. Protocol and thresholds (fixed before the final runs, see README.md):

  evaluation   EVAL_ROWS fixed kjv test windows (32-byte prompt, 32-byte completion), evenly spaced
               over the test split; completions sampled at temperature 1 (the same keys for every
               arm of a seed); teacher-scored NLL per byte = Σ teacher −log p over the sampled
               bytes / their count; distinct-4 of the samples; held-out NLL per byte of the real
               completions under the student.
  GKD          means over seeds: gkd < gkd_mixed < min(sft, supervised_kd) in teacher-NLL, and
               |supervised_kd − sft| < min(sft, supervised_kd) − gkd_mixed ("≈": closer to each
               other than λ = 0.5 is to them), and distinct-4 of gkd and gkd_mixed ≥ DISTINCT_FLOOR ×
               sft's (no win by repetition).
  MiniLLM (b)  tail = a sample whose teacher NLL/byte exceeds the TAIL_QUANTILE quantile of the
               teacher's own samples (temperature 1, same prompts); on every seed minillm (reverse
               KL, λ = 1) has fewer tail samples than supervised_kd (forward KL, λ = 0).
  DistiLLM (b) on every seed, the first checkpoint of the distillm run whose teacher-NLL ≤ gkd's
               final teacher-NLL exists and used fewer student-generation calls than gkd in total.
"""
import json
import pathlib

import jax
import numpy as np
from absl import app, flags

from experiments import report
from experiments.gkd2024 import config as gkd_config
from research import sampling
from research.data import sources, text
from research.eval import lm as eval_lm
from research.train import checkpoint
from research.train.loop import train_and_evaluate

EVAL_ROWS = 256
TAIL_QUANTILE = 0.9
DISTINCT_FLOOR = 0.9
TRACKED = ("gkd", "distillm")  # arms whose every checkpoint is evaluated
PAPERS = {"gkd": "Agarwal et al. 2024 (GKD)", "minillm": "Gu et al. 2024 (MiniLLM) (b)",
          "distillm": "Ko et al. 2024 (DistiLLM) (b)"}


def _config(run: str, seed: int, root: pathlib.Path, data_dir: str):
  return gkd_config.get_config(f"{run},seed={seed},teacher_dir={root / 'teacher'},"
                               f"init_dir={root / f'warm_seed{seed}'},data_dir={data_dir}")


class Evaluator:
  """Samples completions of the fixed prompts and scores them with the teacher (research/eval/lm's
  jitted functions take the variables as arguments: every checkpoint reuses one compilation)."""

  def __init__(self, root: pathlib.Path, data_dir: str):
    _, self.teacher, self.teacher_variables = eval_lm.load_run(str(root / "teacher"))
    self.dataset = _config("sft", 0, root, data_dir).dataset
    self.tok = text.tokenizer(self.dataset)
    test = text.rows(self.dataset, self.dataset.eval_split)
    index = np.linspace(0, len(test["tokens"]) - 1, EVAL_ROWS).astype(int)
    self.rows = {k: np.asarray(v[index]) for k, v in test.items()}

  def samples(self, model, variables, seed: int) -> dict:
    """Completions at temperature 1; row keys depend only on `seed`, so arms share them."""
    keys = sampling.row_keys(jax.random.PRNGKey(10_000 + seed), EVAL_ROWS)
    return eval_lm.continue_rows(model, variables, self.rows, self.dataset.prompt_len, keys, self.tok.eos_id,
                                 self.tok.pad_id, temperature=1.0)

  def evaluate(self, model, variables, seed: int) -> dict:
    """Teacher-NLL/byte of the model's samples (pooled and per row), distinct-4, held-out NLL/byte."""
    rows = self.samples(model, variables, seed)
    sums, counts = eval_lm.score(self.teacher, self.teacher_variables, rows, batch_size=EVAL_ROWS)
    own_sums, own_counts = eval_lm.score(model, variables, self.rows, batch_size=EVAL_ROWS)
    return {"teacher_nll": float(sums.sum() / counts.sum()), "per_row": (sums / counts).tolist(),
            "distinct4": eval_lm.distinct_n(eval_lm.completion_tokens(rows), 4),
            "heldout_nll": float(own_sums.sum() / own_counts.sum())}


def variables_at(workdir: pathlib.Path, step: int, model, dataset) -> dict:
  """The exported student variables of checkpoints/<step> (read-only)."""
  return checkpoint.load_model_variables(str(workdir), model, text.example_shape(dataset), "run", np.int32,
                                         step=step)


def generations(workdir: pathlib.Path) -> dict:
  """{step: cumulative student-generation calls} from the run's metrics.jsonl train lines."""
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines() if l.strip()]
  return {l["step"]: int(l["generations"]) for l in lines if l["split"] == "train"}


def run(workdir: str, seeds, data_dir: str = "") -> dict:
  """Trains (or resumes) every run, evaluates them, returns the results dict with the verdicts."""
  root = pathlib.Path(workdir).absolute()
  root.mkdir(parents=True, exist_ok=True)
  report.cache_compilations(workdir)
  data_dir = data_dir or str(root / "tfds")
  sources.prepare("kjv", data_dir, download=False)
  teacher_eval = train_and_evaluate(_config("teacher", 0, root, data_dir), str(root / "teacher"))
  results = {"runs": {}, "curves": {}, "seeds": list(seeds)}
  for seed in seeds:
    warm = train_and_evaluate(_config("warm", seed, root, data_dir), str(root / f"warm_seed{seed}"))
    results["runs"].setdefault("warm", {}).setdefault("eval_loss", []).append(warm["loss"])
    for arm in gkd_config.ARMS:
      final = train_and_evaluate(_config(arm, seed, root, data_dir), str(root / f"{arm}_seed{seed}"))
      results["runs"].setdefault(arm, {}).setdefault("eval_loss", []).append(final["loss"])

  evaluator = Evaluator(root, data_dir)
  t_rows = evaluator.samples(evaluator.teacher, evaluator.teacher_variables, seed=-1)
  t_sums, t_counts = eval_lm.score(evaluator.teacher, evaluator.teacher_variables, t_rows, EVAL_ROWS)
  t_own, t_own_counts = eval_lm.score(evaluator.teacher, evaluator.teacher_variables, evaluator.rows, EVAL_ROWS)
  threshold = float(np.quantile(t_sums / t_counts, TAIL_QUANTILE))
  results["teacher"] = {
      "eval_loss": teacher_eval["loss"], "samples_teacher_nll": float(t_sums.sum() / t_counts.sum()),
      "distinct4": eval_lm.distinct_n(eval_lm.completion_tokens(t_rows), 4),
      "heldout_nll": float(t_own.sum() / t_own_counts.sum()), "tail_threshold": threshold,
      "data_distinct4": eval_lm.distinct_n(eval_lm.completion_tokens(evaluator.rows), 4)}
  _, student, _ = eval_lm.load_run(str(root / f"sft_seed{seeds[0]}"))
  for seed in seeds:
    warm_vars = eval_lm.load_run(str(root / f"warm_seed{seed}"))[2]
    warm = evaluator.evaluate(student, warm_vars, seed)
    for arm in ("warm",) + gkd_config.ARMS:
      run_dir = root / f"{arm}_seed{seed}"
      found = warm if arm == "warm" else evaluator.evaluate(student, eval_lm.load_run(str(run_dir))[2], seed)
      entry = results["runs"][arm]
      for key in ("teacher_nll", "distinct4", "heldout_nll"):
        entry.setdefault(key, []).append(found[key])
      entry.setdefault("tail", []).append(float(np.mean(np.array(found["per_row"]) > threshold)))
      if arm in TRACKED:
        gens = generations(run_dir)
        steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
        curve = {"steps": [0], "generations": [0], "teacher_nll": [warm["teacher_nll"]]}
        for step in steps:
          found = evaluator.evaluate(student, variables_at(run_dir, step, student, evaluator.dataset), seed)
          curve["steps"].append(step)
          curve["generations"].append(gens[step])
          curve["teacher_nll"].append(found["teacher_nll"])
        results["curves"].setdefault(arm, []).append(curve)
  return summarize(results)


def _m(results, arm, key="teacher_nll") -> float:
  return float(np.mean(results["runs"][arm][key]))


def first_reaching(curve: dict, target: float):
  """(step, generations) of the first checkpoint (after step 0) with teacher-NLL ≤ target, or None."""
  for step, gens, nll in zip(curve["steps"][1:], curve["generations"][1:], curve["teacher_nll"][1:]):
    if nll <= target:
      return step, gens
  return None


def summarize(results: dict) -> dict:
  """Adds the three claims (holds, the numbers they were decided on) to `results`."""
  m = lambda arm, key="teacher_nll": _m(results, arm, key)
  base = min(m("sft"), m("supervised_kd"))
  gap, gain = abs(m("supervised_kd") - m("sft")), base - m("gkd_mixed")
  floor = DISTINCT_FLOOR * m("sft", "distinct4")
  gkd_holds = (m("gkd") < m("gkd_mixed") < base and gap < gain
               and min(m("gkd", "distinct4"), m("gkd_mixed", "distinct4")) >= floor)
  gkd_detail = (f"teacher-NLL/byte λ=1 {m('gkd'):.3f}, λ=0.5 {m('gkd_mixed'):.3f}, SFT {m('sft'):.3f}, "
                f"supervised KD {m('supervised_kd'):.3f} (need λ=1 < λ=0.5 < both); |KD − SFT| {gap:.3f} vs "
                f"λ=0.5 gain {gain:.3f} (need <); distinct-4 λ=1 {m('gkd', 'distinct4'):.3f}, "
                f"λ=0.5 {m('gkd_mixed', 'distinct4'):.3f} (need ≥ {floor:.3f} = {DISTINCT_FLOOR} × SFT's)")
  rev, fwd = results["runs"]["minillm"]["tail"], results["runs"]["supervised_kd"]["tail"]
  mini_holds = all(r < f for r, f in zip(rev, fwd))
  mini_detail = (f"tail fraction (teacher NLL/byte > {results['teacher']['tail_threshold']:.3f}, the "
                 f"teacher's own p{int(100 * TAIL_QUANTILE)}) per seed: reverse KL "
                 f"{', '.join(f'{100 * r:.1f}' for r in rev)} % vs forward KL "
                 f"{', '.join(f'{100 * f:.1f}' for f in fwd)} % (need < on every seed)")
  per_seed, dist_holds = [], True
  for gkd_curve, dist_curve in zip(results["curves"]["gkd"], results["curves"]["distillm"]):
    target, budget = gkd_curve["teacher_nll"][-1], gkd_curve["generations"][-1]
    hit = first_reaching(dist_curve, target)
    ok = hit is not None and hit[1] < budget
    dist_holds &= ok
    per_seed.append(f"GKD final {target:.3f} after {budget} generations; DistiLLM "
                    + (f"reaches it at step {hit[0]} after {hit[1]}" if hit else
                       f"never reaches it (best {min(dist_curve['teacher_nll'][1:]):.3f})"))
  claims = {"gkd": (gkd_holds, gkd_detail), "minillm": (mini_holds, mini_detail),
            "distillm": (dist_holds, "; ".join(per_seed) + " (need fewer on every seed)")}
  results["claims"] = {k: {"holds": bool(v[0]), "detail": v[1], "paper": PAPERS[k]} for k, v in claims.items()}
  results["teacher_beats_student"] = results["teacher"]["heldout_nll"] < m("sft", "heldout_nll")
  return results


ROWS = (("SFT warm start (start of every arm)", "warm"), ("SFT (continued)", "sft"),
        ("supervised KD (forward KL, λ=0)", "supervised_kd"), ("GKD JSD(0.5), λ=0.5", "gkd_mixed"),
        ("GKD JSD(0.5), λ=1 (on-policy)", "gkd"), ("MiniLLM-style reverse KL, λ=1", "minillm"),
        ("DistiLLM skew RKL(0.1) + replay", "distillm"))
COLUMNS = (("teacher_nll", "teacher-NLL/byte of samples", 3), ("distinct4", "distinct-4", 3),
           ("tail", "tail fraction %", 1), ("heldout_nll", "held-out NLL/byte (256 windows)", 3),
           ("eval_loss", "held-out NLL/byte (whole test split)", 3))


def markdown(results: dict) -> str:
  t = results["teacher"]
  lines = [f"Teacher: held-out NLL/byte {t['heldout_nll']:.3f} on the 256 windows ({t['eval_loss']:.3f} "
           f"on the packed test split); its own samples: teacher-NLL/byte {t['samples_teacher_nll']:.3f}, "
           f"distinct-4 {t['distinct4']:.3f} (real completions: {t['data_distinct4']:.3f}); tail threshold "
           f"(p{int(100 * TAIL_QUANTILE)} of its samples' NLL/byte) {t['tail_threshold']:.3f}.", ""]
  for key, title, digits in COLUMNS:
    scale = 100.0 if key == "tail" else 1.0
    lines += [f"**{title}** (seeds {', '.join(map(str, results['seeds']))})", "",
              "| run | per seed | mean |", "|---|---|---|"]
    for label, arm in ROWS:
      values = [scale * v for v in results["runs"][arm].get(key, [])]
      if values:
        lines.append(f"| {label} | {', '.join(f'{v:.{digits}f}' for v in values)} | {np.mean(values):.{digits}f} |")
    lines.append("")
  lines += ["**teacher-NLL/byte over training** (checkpoint step: generations → NLL)", "",
            "| arm | seed | curve |", "|---|---|---|"]
  for arm, curves in results["curves"].items():
    for seed, c in zip(results["seeds"], curves):
      points = ", ".join(f"{s}: {g} → {n:.3f}" for s, g, n in zip(c["steps"], c["generations"], c["teacher_nll"]))
      lines.append(f"| {arm} | {seed} | {points} |")
  lines += [""] + report.claims_table(results["claims"], issue=4)
  lines += ["", f"Teacher beats the SFT student on held-out NLL: {results['teacher_beats_student']}."]
  return "\n".join(lines) + "\n"


def plot(results: dict):
  plt = report.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
  arms = [arm for _, arm in ROWS]
  for i, arm in enumerate(arms):
    values = results["runs"][arm]["teacher_nll"]
    left.scatter([i] * len(values), values, color="tab:blue", s=12)
    left.scatter([i], [np.mean(values)], color="k", marker="_", s=300)
  left.axhline(results["teacher"]["samples_teacher_nll"], color="gray", ls=":", label="teacher's own samples")
  left.set(xticks=range(len(arms)), ylabel="teacher NLL / byte of samples (T=1)",
           title="KJV char-LM: teacher-scored NLL (bar = mean)")
  left.set_xticklabels(arms, rotation=30, fontsize=8)
  left.legend(fontsize=8)
  for arm, color in (("gkd", "tab:red"), ("distillm", "tab:green")):
    for k, c in enumerate(results["curves"][arm]):
      right.plot(c["generations"], c["teacher_nll"], color=color, marker=".", alpha=0.7,
                 label=arm if k == 0 else None)
  right.set(xlabel="student-generation calls", ylabel="teacher NLL / byte",
            title="teacher-NLL over training (one line per seed)")
  right.legend(fontsize=8)
  return fig


def write(results: dict, workdir: str) -> str:
  return report.write(results, workdir, markdown, plot)


def _define_flags() -> None:
  """Flags exist only when this module is the program, so tests can import it beside other scripts."""
  report.define_flags("/tmp/distillery/gkd2024")  # --data_dir '' = <workdir>/tfds, built offline


def main(argv):
  del argv
  args = flags.FLAGS
  report.main(lambda: run(args.workdir, report.seeds(), args.data_dir), write)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
