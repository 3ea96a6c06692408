r"""Small-scale reproduction of DeepSeek-AI 2025 (R1): distillation vs outcome-reward RL, table, plot, verdict.

  python -m experiments.deepseekr1_2025.reproduce --workdir=/tmp/distillery/deepseekr1_2025

1. trains the teacher (experiments/deepseekr1_2025/config.py) and checks its greedy "[explain]"
   solutions on the first 500 test questions (≥ 90 % correct answers wanted);
2. rejection-samples it: K = 4 solutions per student training question at temperature 1, keeps
   those whose final answer is right (synthetic.answer_from_rationale == answer_of) and writes
   them as the prompt/completion dataset TRACES (experiments/label_with_teacher.write_examples);
3. per seed: the answer-only SFT init, then from it arm (a) SFT on the traces, (b) GRPO, (c)
   answer-only SFT continued, at an equal student-token budget;
4. scores every run by exact match of its greedy answer on the first 500 test questions (arm (a)
   in its own format: the answer its "[explain]" solution ends in) and writes results.{json,md,png}
   with each run's compute ledger. The claim was fixed in README.md before the run.
Runs live under --workdir; the data (arithmetic, TRACES) in --data_dir (default TFDS's).
"""
import json
import pathlib
import time

import ml_collections
import numpy as np
from absl import app, flags

from experiments import label_with_teacher, report
from experiments.deepseekr1_2025 import config as r1_config
from research.data import builders, sources, synthetic
from research.errors import UserError
from research.eval import lm as lm_eval
from research.train import ledger as ledger_lib
from research.train.loop import train_and_evaluate

PAPER = "DeepSeek-AI 2025 (DeepSeek-R1, Table 6: distillation vs RL)"
MARGIN = 10.0  # points of exact match, the issue's threshold
LABELS = {"init": "answer-only SFT init", "traces": "(a) SFT on teacher's correct traces",
          "grpo": "(b) GRPO from the init", "answer": "(c) answer-only SFT continued"}


def _config(run: str, seed: int, data_dir: str, num_devices: int, init_from: str = "", num_steps: int = 0):
  config = r1_config.get_config(f"{run},seed={seed}")
  config.dataset.data_dir = data_dir
  config.parallel.num_devices = num_devices
  config.init_from = init_from
  if num_steps:  # pilots and tests only
    config.num_steps = config.eval_every_steps = config.checkpoint_every_steps = num_steps
  return config


def _cached(path: pathlib.Path, compute) -> dict:
  """compute() -> dict, saved as `path` so a re-run of a finished reproduction is cheap."""
  if not path.exists():
    path.write_text(json.dumps(compute(), indent=2))
  return json.loads(path.read_text())


def _test_questions(config, explain: bool):
  """The dataset config whose eval split holds the first 500 test questions in a run's format."""
  dataset = ml_collections.ConfigDict(config.dataset.to_dict())
  if explain:
    dataset.name, dataset.seq_len = "arithmetic_multitask", r1_config.EXPLAIN_LEN
    dataset.eval_split = f"test[:{2 * r1_config.TEST_QUESTIONS}]"
  else:
    dataset.name, dataset.seq_len = "arithmetic", r1_config.ANSWER_LEN
    dataset.eval_split = f"test[:{r1_config.TEST_QUESTIONS}]"
  return dataset


def exact_match(workdir: str, explain: bool) -> dict:
  """% of the first 500 test questions the run answers right, greedy: its "[explain] q" solution's
  final answer (explain) or its direct answer to "q". Cached in the workdir."""
  def compute():
    config, model, variables = lm_eval.load_run(workdir)
    dataset = _test_questions(config, explain)
    select = (lambda p: synthetic.parse_question(p)[2] == "explain") if explain else None
    pairs, outputs = lm_eval.decode_texts(model, variables, dataset, dataset.eval_split, select=select,
                                          batch_size=250, temperature=0.0)
    prompts = [p for p, _ in pairs]
    if explain:
      correct = [synthetic.answer_from_rationale(o) == synthetic.answer_of(p) for p, o in zip(prompts, outputs)]
    else:
      correct = [synthetic.exact_match(p, o) for p, o in zip(prompts, outputs)]
    return {"exact_match": 100.0 * float(np.mean(correct)), "questions": len(prompts),
            "examples": [[p, o] for p, o in zip(prompts[:8], outputs[:8])]}
  return _cached(pathlib.Path(workdir) / ("explain_exact_match.json" if explain else "answer_exact_match.json"),
                 compute)


def rejection_sample(teacher_dir: str, data_dir: str, out: pathlib.Path) -> dict:
  """Writes dataset TRACES: the teacher's temperature-1 solutions of the student's N training
  questions ("[explain] q", K per question) whose final answer is right; returns the statistics."""
  def compute():
    if sources.is_prepared(r1_config.TRACES, data_dir):
      raise UserError(f"Dataset {r1_config.TRACES} exists in {data_dir} but {out} does not record how it "
                      "was made; delete the dataset folder (or use a fresh --workdir/--data_dir).")
    config, model, variables = lm_eval.load_run(teacher_dir)
    dataset = ml_collections.ConfigDict(config.dataset.to_dict())
    dataset.data_dir = data_dir
    split = f"train[:{2 * r1_config.N}]"  # the N student questions, each as [answer] and [explain]
    is_explain = lambda p: synthetic.parse_question(p)[2] == "explain"
    started, draws = time.time(), []
    for k in range(r1_config.SAMPLES_PER_QUESTION):
      pairs, outputs = lm_eval.decode_texts(model, variables, dataset, split, select=is_explain, seed=k,
                                            batch_size=250, temperature=1.0)
      draws.append(outputs)
    examples, covered, oracle = [], 0, 0
    for i, (prompt, reference) in enumerate(pairs):
      kept = [d[i] for d in draws if synthetic.answer_from_rationale(d[i]) == synthetic.answer_of(prompt)]
      covered += bool(kept)
      oracle += sum(t == reference for t in kept)
      examples += [{"prompt": prompt, "completion": t, "reference": reference} for t in kept]
    seconds = time.time() - started
    label_with_teacher.write_examples(r1_config.TRACES, examples, data_dir)
    total = len(pairs) * r1_config.SAMPLES_PER_QUESTION
    return {"questions": len(pairs), "samples": total, "accepted": len(examples),
            "acceptance_rate": 100.0 * len(examples) / total, "questions_covered": 100.0 * covered / len(pairs),
            "accepted_equal_to_oracle": 100.0 * oracle / max(len(examples), 1), "sampling_seconds": seconds,
            "examples": [[e["prompt"], e["completion"]] for e in examples[:5]]}
  return _cached(out, compute)


def _ledger(workdir: str, tokens_per_step: int) -> dict:
  ledger = ledger_lib.load(workdir)
  steps = ledger.get("steps", 0)
  return {"steps": steps, "student_tokens": steps * tokens_per_step,
          "flops": ledger.get("step_flops", 0.0) * steps, "seconds": ledger.get("wall_seconds", 0.0)}


def _grpo_reward(workdir: str) -> list:
  """(step, mean reward of the step's samples) from the GRPO run's training log."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [(m["step"], m["reward"]) for m in map(json.loads, lines) if m["split"] == "train" and "reward" in m]


def run(workdir: str, seeds, data_dir: str = "", num_devices: int = 1, num_steps: int = 0) -> dict:
  """Trains (or resumes) everything and returns the results dict with the claims' verdicts.
  `num_steps` > 0 shortens every student run (pilots and tests only; they go to workdir/steps<n>/,
  the teacher and its traces are the full run's)."""
  top = pathlib.Path(workdir)
  top.mkdir(parents=True, exist_ok=True)
  report.cache_compilations(workdir)
  teacher_dir = str(top / "teacher")
  train_and_evaluate(_config("teacher", 0, data_dir, num_devices), teacher_dir)
  teacher = {"explain_exact_match": exact_match(teacher_dir, explain=True)["exact_match"],
             "ledger": _ledger(teacher_dir, r1_config.BATCH["teacher"] * r1_config.EXPLAIN_LEN)}
  traces = rejection_sample(teacher_dir, data_dir or builders.default_data_dir(), top / "traces.json")
  root = top / f"steps{num_steps}" if num_steps else top
  root.mkdir(exist_ok=True)
  scores = {run: [] for run in ("init",) + r1_config.ARMS}
  ledgers = {run: [] for run in scores}
  rewards = []
  for seed in seeds:
    init_dir = str(root / f"init_seed{seed}")
    train_and_evaluate(_config("init", seed, data_dir, num_devices, num_steps=num_steps), init_dir)
    for run in scores:
      run_dir = init_dir if run == "init" else str(root / f"{run}_seed{seed}")
      if run != "init":
        train_and_evaluate(_config(run, seed, data_dir, num_devices, init_dir, num_steps), run_dir)
      scores[run].append(exact_match(run_dir, explain=run == "traces")["exact_match"])
      tokens = (r1_config.BATCH["init"] * r1_config.ANSWER_LEN if run == "init"
                else r1_config.TOKENS_PER_STEP[run])
      ledgers[run].append(_ledger(run_dir, tokens))
      if run == "grpo":
        rewards.append(_grpo_reward(run_dir))
  results = summarize(scores, list(seeds))
  results.update(teacher=teacher, traces=traces, ledgers=ledgers, grpo_reward=rewards)
  return results


def summarize(scores: dict, seeds: list) -> dict:
  """The claims of issue 5: (a) − (b) ≥ 10 pt and (a) − (c) ≥ 10 pt, in the mean over seeds and
  on every seed."""
  claims = {}
  for key, other in (("distill_vs_grpo", "grpo"), ("distill_vs_answer_sft", "answer")):
    a, b = scores["traces"], scores[other]
    gaps = [x - y for x, y in zip(a, b)]
    holds = bool(len(gaps) == len(seeds) and np.mean(gaps) >= MARGIN and all(g >= MARGIN for g in gaps))
    claims[key] = {"holds": holds, "paper": PAPER,
                   "detail": f"(a) {', '.join(f'{x:.1f}' for x in a)} vs {LABELS[other][:3]} "
                             f"{', '.join(f'{y:.1f}' for y in b)}: gaps {', '.join(f'{g:+.1f}' for g in gaps)}, "
                             f"mean {np.mean(gaps):+.1f} (need ≥ {MARGIN:.0f} in the mean and on every seed)"}
  return {"scores": scores, "seeds": seeds, "claims": claims}


def markdown(results: dict) -> str:
  scores, seeds, ledgers = results["scores"], results["seeds"], results["ledgers"]
  lines = [f"| student | exact match % on 500 test questions, seeds {', '.join(map(str, seeds))} | mean | "
           "training steps | student tokens (rows × seq_len) | train FLOPs (ledger, mean) | wall s (mean) |",
           "|---|---|---|---|---|---|---|"]
  for run, values in scores.items():
    led = ledgers[run]
    lines.append(f"| {LABELS[run]} | {', '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} | "
                 f"{led[0]['steps']} | {led[0]['student_tokens']:,} | {np.mean([l['flops'] for l in led]):.3g} | "
                 f"{np.mean([l['seconds'] for l in led]):.0f} |")
  teacher, traces = results["teacher"], results["traces"]
  lines += ["", f"Teacher: greedy `[explain]` solutions end in the right answer on "
            f"{teacher['explain_exact_match']:.1f} % of the 500 test questions; trained {teacher['ledger']['steps']} "
            f"steps, {teacher['ledger']['flops']:.3g} FLOPs, {teacher['ledger']['seconds']:.0f} s. Rejection "
            f"sampling: {traces['accepted']:,} of {traces['samples']:,} samples accepted "
            f"({traces['acceptance_rate']:.1f} %), {traces['questions_covered']:.1f} % of the "
            f"{traces['questions']:,} questions with ≥ 1 accepted solution, "
            f"{traces['accepted_equal_to_oracle']:.1f} % of accepted solutions identical to the oracle "
            f"rationale; sampling took {traces['sampling_seconds']:.0f} s."]
  if results.get("grpo_reward"):
    parts = [f"seed {s}: " + ", ".join(f"{r:.3f}@{step}" for step, r in curve)
             for s, curve in zip(seeds, results["grpo_reward"])]
    lines += ["", "GRPO mean reward of its samples (at logged steps): " + "; ".join(parts) + "."]
  lines += [""] + report.claims_table(results["claims"], issue=5)
  return "\n".join(lines) + "\n"


def plot(results: dict):
  plt = report.pyplot()
  scores = results["scores"]
  runs = list(scores)
  fig, ax = plt.subplots(figsize=(6.5, 4))
  ax.bar(range(len(runs)), [np.mean(scores[r]) for r in runs], color=["tab:gray", "tab:blue", "tab:red", "tab:orange"])
  for i, r in enumerate(runs):
    ax.scatter([i] * len(scores[r]), scores[r], color="black", s=10, zorder=3)
  ax.set_xticks(range(len(runs)))
  ax.set_xticklabels([LABELS[r].replace(" from the init", "").replace(" continued", "") for r in runs],
                     fontsize=7, rotation=12)
  ax.set(ylabel="exact match % (500 test questions)", ylim=(0, 100),
         title="Distillation vs GRPO, 2–3-digit addition (dots: seeds)")
  return fig


def write(results: dict, workdir: str) -> str:
  return report.write(results, workdir, markdown, plot)


def _define_flags() -> None:
  """Flags exist only when this module is the program, so tests can import it beside other scripts."""
  report.define_flags("/tmp/distillery/deepseekr1_2025")


def main(argv):
  del argv
  args = flags.FLAGS
  report.main(lambda: run(args.workdir, report.seeds(), args.data_dir, args.num_devices), write)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
