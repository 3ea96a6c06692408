r"""Small-scale reproduction of Hsieh et al. 2023 (distilling step-by-step): table, plot, verdict.

  python -m experiments.stepbystep2023.reproduce --workdir=/tmp/distillery/stepbystep2023

Trains (or resumes) the label-only and the multi-task student of experiments/stepbystep2023/config.py
at every training-set size and seed, scores each by exact match of its greedy answer on the first
500 test questions, and writes results.{json,md,png}. The claim and the protocol were fixed in
issue #4 before any run; the verdict is PASS or NOT REPRODUCED from the numbers, never tuned after.
"""
import json
import pathlib

import numpy as np
from absl import app, flags

from experiments import report
from experiments.stepbystep2023 import config as sbs_config
from research.data import synthetic
from research.eval import lm as lm_eval
from research.train.loop import train_and_evaluate

CLAIM_SIZES = sbs_config.SIZES[:2]  # the claim: the two smallest training sets
PAPER = "Hsieh et al. 2023 (distilling step-by-step)"


def _config(run: str, n: int, seed: int, data_dir: str, num_devices: int):
  config = sbs_config.get_config(f"{run},n={n},seed={seed}")
  config.dataset.data_dir = data_dir
  config.parallel.num_devices = num_devices
  return config


def _decode(workdir: str, explain: bool) -> tuple:
  """(prompts, greedy outputs) of the run for its eval split's answer prompts ("q" / "[answer] q",
  the even rows of the multi-task data) or, with `explain`, its "[explain] q" prompts."""
  config, model, variables = lm_eval.load_run(workdir)
  is_explain = lambda prompt: synthetic.parse_question(prompt)[2] == "explain"
  pairs, outputs = lm_eval.decode_texts(model, variables, config.dataset, config.dataset.eval_split,
                                        select=lambda p: is_explain(p) == explain, batch_size=250,
                                        temperature=0.0)
  return [p for p, _ in pairs], outputs


def _cached(workdir: str, name: str, compute) -> dict:
  """compute() -> dict, saved as workdir/name so a re-run of a finished reproduction is cheap."""
  cache = pathlib.Path(workdir) / name
  if not cache.exists():
    cache.write_text(json.dumps(compute(), indent=2))
  return json.loads(cache.read_text())


def answer_accuracy(workdir: str) -> float:
  """Exact match (%) of the run's greedy answers on its eval split's answer prompts: "q" for the
  label-only student, "[answer] q" (the even rows) for the multi-task one. Cached in the workdir."""
  def compute():
    prompts, outputs = _decode(workdir, explain=False)
    score = 100.0 * float(np.mean([synthetic.exact_match(p, o) for p, o in zip(prompts, outputs)]))
    return {"exact_match": score, "questions": len(prompts),
            "examples": [[p, o] for p, o in zip(prompts[:10], outputs[:10])]}
  return _cached(workdir, "answer_exact_match.json", compute)["exact_match"]


def rationale_accuracy(workdir: str) -> float:
  """Diagnostic, not part of the claim: % of the first 500 test questions whose greedy "[explain] q"
  output (the odd rows) states the right answer after its last "=" (the chain-of-thought route,
  which the paper does not use at test time). Cached in the workdir."""
  def compute():
    prompts, outputs = _decode(workdir, explain=True)
    correct = [synthetic.answer_from_rationale(o) == synthetic.answer_of(p) for p, o in zip(prompts, outputs)]
    exact = [synthetic.exact_match(p, o) for p, o in zip(prompts, outputs)]
    return {"answer_correct": 100.0 * float(np.mean(correct)),
            "rationale_exact_match": 100.0 * float(np.mean(exact)), "questions": len(prompts),
            "examples": [[p, o] for p, o in zip(prompts[:10], outputs[:10])]}
  return _cached(workdir, "rationale_answer.json", compute)["answer_correct"]


def run(workdir: str, seeds, data_dir: str = "", num_devices: int = 1, sizes=sbs_config.SIZES) -> dict:
  """Trains (or resumes) every run and returns the results dict with the claim's verdict."""
  root = pathlib.Path(workdir)
  report.cache_compilations(workdir)
  scores = {run: {str(n): [] for n in sizes} for run in sbs_config.RUNS}
  token_accuracy = {run: {str(n): [] for n in sizes} for run in sbs_config.RUNS}
  rationale_route = {str(n): [] for n in sizes}
  for seed in seeds:
    for n in sizes:
      for name in sbs_config.RUNS:
        run_dir = str(root / f"{name}_n{n}_seed{seed}")
        result = train_and_evaluate(_config(name, n, seed, data_dir, num_devices), run_dir)
        scores[name][str(n)].append(answer_accuracy(run_dir))
        token_accuracy[name][str(n)].append(100.0 * result["accuracy"])
        if name == "multitask":
          rationale_route[str(n)].append(rationale_accuracy(run_dir))
  results = summarize(scores, token_accuracy, list(seeds))
  results["rationale_route"] = rationale_route
  return results


def summarize(scores: dict, token_accuracy: dict, seeds: list) -> dict:
  """The claim of issue #4: multi-task > label-only at the two smallest sizes, on every seed."""
  checks, parts = [], []
  for n in CLAIM_SIZES:
    multi, label = scores["multitask"][str(n)], scores["label"][str(n)]
    wins = [m > l for m, l in zip(multi, label)]
    checks += wins + [len(wins) == len(seeds)]
    parts.append(f"N={n}: multi-task {', '.join(f'{m:.1f}' for m in multi)} vs label-only "
                 f"{', '.join(f'{l:.1f}' for l in label)} ({sum(wins)}/{len(wins)} seeds won)")
  holds = bool(all(checks))
  detail = "; ".join(parts) + " (need multi-task > label-only on every seed at both sizes)"
  return {"scores": scores, "token_accuracy": token_accuracy, "seeds": seeds,
          "claims": {"stepbystep": {"holds": holds, "detail": detail, "paper": PAPER}}}


def markdown(results: dict) -> str:
  scores, seeds = results["scores"], results["seeds"]
  lines = ["| N (questions) | student | answer exact match % on 500 test questions, seeds "
           f"{', '.join(map(str, seeds))} | mean | next-token acc. % (eval split, mean) |",
           "|---|---|---|---|---|"]
  for n in scores["label"]:
    for name, label in (("label", "label-only"), ("multitask", "multi-task (answer + rationale)")):
      values = scores[name][n]
      token = np.mean(results["token_accuracy"][name][n])
      lines.append(f"| {n} | {label} | {', '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} | "
                   f"{token:.1f} |")
  if "rationale_route" in results:
    lines += ["", "Diagnostic (not part of the claim): the multi-task student asked to *explain* (greedy "
              "`[explain] q`), % of the 500 test questions whose rationale ends in the right answer.", "",
              "| N | rationale route, per seed | mean |", "|---|---|---|"]
    for n, values in results["rationale_route"].items():
      lines.append(f"| {n} | {', '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} |")
  lines += [""] + report.claims_table(results["claims"], issue=4)
  return "\n".join(lines) + "\n"


def plot(results: dict):
  plt = report.pyplot()
  scores = results["scores"]
  sizes = [int(n) for n in scores["label"]]
  fig, ax = plt.subplots(figsize=(6, 4.2))
  for name, label, color in (("label", "label-only", "tab:gray"),
                             ("multitask", "multi-task (answer + rationale)", "tab:blue")):
    for n in sizes:
      ax.scatter([n] * len(scores[name][str(n)]), scores[name][str(n)], color=color, s=12, alpha=0.6)
    ax.plot(sizes, [np.mean(scores[name][str(n)]) for n in sizes], marker="o", color=color, label=label)
  ax.set(xscale="log", xticks=sizes, xlabel="training questions N", ylabel="answer exact match % (test)",
         title="Distilling step-by-step, 2–3-digit addition (dots: seeds)")
  ax.set_xticklabels([str(n) for n in sizes])
  ax.minorticks_off()
  ax.legend(fontsize=8)
  return fig


def write(results: dict, workdir: str) -> str:
  return report.write(results, workdir, markdown, plot)


def _define_flags() -> None:
  """Flags exist only when this module is the program, so tests can import it beside other scripts."""
  report.define_flags("/tmp/distillery/stepbystep2023")

def main(argv):
  del argv
  args = flags.FLAGS
  report.main(lambda: run(args.workdir, report.seeds(), args.data_dir, args.num_devices), write)

if __name__ == "__main__":
  _define_flags()
  app.run(main)
