r"""Distilling through an API, at small scale: student quality vs the teacher's access level, 3 seeds.

  python -m experiments.api_distillation.reproduce --workdir=/tmp/distillery/api_distillation

Trains (or finds) both teachers, serves each with experiments/serve_teacher.py's server on a free
loopback port, labels the attacker's data once per access level through the API (a budget of one
query per image batch / text window; responses cached in workdir/<study>/api_responses.sqlite, so a
rerun pays nothing), trains the students from the caches and writes results.{json,md,png}.
Protocol and thresholds (fixed before the final run, README.md):

  image     accuracy on the 10,000 test images; forensics: the share of the teacher's wrong test
            predictions that the student repeats with the same wrong label (copy rate).
            Claims: top-5 > top-1 on every seed; full ≥ top-5 in the mean over seeds.
  language  held-out NLL per byte of the real test completions (the trainer's final eval) and the
            teacher-scored NLL per byte of the student's samples (T = 1) on EVAL_ROWS fixed test
            prompts. Claims: every soft level (logits, top-20, top-5, top-1) beats text only in
            held-out NLL on every seed; mean held-out NLL full ≤ top-20 ≤ top-5 ≤ top-1, each step
            within TIE nats/byte counting as ≤.
  ledger    the cost (FLOPs: labelling + student training; teacher training shown apart) of reaching
            the top-20 student's final held-out NLL by distillation vs the scratch run's first
            evaluation at or below it.
"""
import pathlib

import jax
import numpy as np
from absl import app, flags

from experiments import label_with_teacher, report
from experiments.api_distillation import config as api_config
from research import sampling
from research.data import sources, text
from research.eval import lm as eval_lm
from research.teachers import access, cache, server as server_lib
from research.teachers.client import TeacherClient
from research.train import ledger
from research.train.loop import train_and_evaluate

EVAL_ROWS = 256
TIE = 0.005
IMAGES_PER_QUERY = 50  # 50 images of 28×28 as JSON floats ≈ 0.6 MB, under the server's 1 MB request limit
LM_ORDER = ("logits", "topk20", "topk5", "topk1")
LABELS = {"image": {"text": "top-1 label", "topk5": "top-5 log-probs", "logits": "full logits",
                    "true_labels": "true labels (no teacher)"},
          "language": {"logits": "full logits", "topk20": "top-20 log-probs", "topk5": "top-5 log-probs",
                       "topk1": "top-1 log-prob", "text": "text only (samples)",
                       "scratch": "scratch (real text, no teacher)"}}


DATA_DIR = [""]  # the TFDS data dir of this reproduction's runs and caches ('' = the default)


def _config(run: str, level: str = "topk5", seed: int = 0):
  return api_config.get_config(f"{run},level={level},seed={seed},data_dir={DATA_DIR[0]}")


def _label(study: str, root: pathlib.Path, teacher_dir: pathlib.Path, dataset, levels: dict, limit: int,
           batch_size: int, tokenizer=None) -> dict:
  """Writes each level's cache (unless present) through the served teacher; returns the provenances
  and labelling ledgers. Full logits, which an API does not return for an LM, are labelled in process."""
  written = {}
  served = server_lib.serve({"teacher": str(teacher_dir)}, "127.0.0.1", 0)
  try:
    for level, spec in levels.items():
      if spec is None:
        continue
      name = api_config.CACHE[study].format(level)
      if not cache.exists(name, dataset.data_dir):
        kind, k = spec
        if study == "language" and kind == "logits":
          teacher = access.LocalTeacher(str(teacher_dir))
        else:
          client = TeacherClient(served.url, "teacher", cache_path=str(root / "api_responses.sqlite"),
                                 max_queries=limit if study == "language" else -(-limit // IMAGES_PER_QUERY))
          teacher = access.ApiTeacher(client, tokenizer, images_per_query=IMAGES_PER_QUERY)
        label_with_teacher.label_cache(teacher, dataset, name, kind, k, limit=limit, batch_size=batch_size)
      _, provenance, labelling = cache.load(name, dataset.data_dir)
      written[level] = {"provenance": provenance.to_json(), "ledger": labelling}
  finally:
    served.shutdown()
  return written


def _copy_rate(student: np.ndarray, teacher: np.ndarray, labels: np.ndarray) -> float:
  wrong = teacher != labels
  return float(np.mean(student[wrong] == teacher[wrong]))


def image_study(root: pathlib.Path, seeds: list) -> dict:
  teacher_dir = root / "teacher"
  teacher_result = train_and_evaluate(_config("image_teacher"), str(teacher_dir))
  dataset = _config("image_student").dataset
  labelled = _label("image", root, teacher_dir, dataset, api_config.IMAGE_LEVELS, api_config.ATTACK_IMAGES, 500)
  test = sources.ArraySource.from_tfds(sources.open_split(dataset.name, dataset.eval_split, dataset.data_dir, False))
  teacher_pred = access.LocalTeacher(str(teacher_dir)).classify(test.images, 1.0, 1)[0][:, 0]
  runs = {}
  for level in api_config.IMAGE_LEVELS:
    for seed in seeds:
      workdir = root / f"{level}_seed{seed}"
      final = train_and_evaluate(_config("image_student", level, seed), str(workdir))
      pred = access.LocalTeacher(str(workdir)).classify(test.images, 1.0, 1)[0][:, 0]
      runs.setdefault(level, {})[str(seed)] = {
          "accuracy": final["accuracy"], "copy_rate": _copy_rate(pred, teacher_pred, test.labels),
          "agreement": float(np.mean(pred == teacher_pred)), "cost": ledger.totals(ledger.load(str(workdir)))}
  return {"teacher_accuracy": teacher_result["accuracy"], "labelled": labelled, "runs": runs}


class _LanguageEvaluator:
  """Teacher-scored NLL per byte of a student's samples on fixed test prompts (GKD's measure)."""

  def __init__(self, teacher_dir: pathlib.Path, dataset):
    _, self.teacher, self.teacher_variables = eval_lm.load_run(str(teacher_dir))
    self.dataset, self.tok = dataset, text.tokenizer(dataset)
    test = text.rows(dataset, dataset.eval_split)
    index = np.linspace(0, len(test["tokens"]) - 1, EVAL_ROWS).astype(int)
    self.rows = {k: np.asarray(v[index]) for k, v in test.items()}

  def __call__(self, workdir: pathlib.Path, seed: int) -> dict:
    _, model, variables = eval_lm.load_run(str(workdir))
    keys = sampling.row_keys(jax.random.PRNGKey(10_000 + seed), EVAL_ROWS)
    rows = eval_lm.continue_rows(model, variables, self.rows, self.dataset.prompt_len, keys, self.tok.eos_id,
                                 self.tok.pad_id, temperature=1.0)
    sums, counts = eval_lm.score(self.teacher, self.teacher_variables, rows, batch_size=EVAL_ROWS)
    return {"teacher_nll": float(sums.sum() / counts.sum()),
            "distinct4": eval_lm.distinct_n(eval_lm.completion_tokens(rows), 4)}


def language_study(root: pathlib.Path, seeds: list) -> dict:
  teacher_dir = root / "teacher"
  teacher_result = train_and_evaluate(_config("lm_teacher"), str(teacher_dir))
  dataset = _config("lm_student").dataset
  labelled = _label("language", root, teacher_dir, dataset, api_config.LM_LEVELS, api_config.LM_QUERIES, 64,
                    text.tokenizer(dataset))
  evaluate = _LanguageEvaluator(teacher_dir, dataset)
  runs = {}
  for level in api_config.LM_LEVELS:
    for seed in seeds:
      workdir = root / f"{level}_seed{seed}"
      final = train_and_evaluate(_config("lm_student", level, seed), str(workdir))
      runs.setdefault(level, {})[str(seed)] = {"heldout_nll": final["loss"], **evaluate(workdir, seed),
                                              "cost": ledger.totals(ledger.load(str(workdir)))}
  costs = {}
  for seed in seeds:
    target = runs["topk20"][str(seed)]["heldout_nll"]
    costs[str(seed)] = ledger.compare(str(root / f"topk20_seed{seed}"), str(root / f"scratch_seed{seed}"), "loss",
                                      target, higher_is_better=False)
  return {"teacher_heldout_nll": teacher_result["loss"], "teacher_cost": ledger.totals(ledger.load(str(teacher_dir))),
          "labelled": labelled, "runs": runs, "cost_to_target": costs}


def _mean(runs: dict, level: str, key: str) -> float:
  return float(np.mean([r[key] for r in runs[level].values()]))


def claims(results: dict) -> dict:
  image, lm = results["image"]["runs"], results["language"]["runs"]
  seeds = list(image["text"])
  top5_beats_top1 = all(image["topk5"][s]["accuracy"] > image["text"][s]["accuracy"] for s in seeds)
  full_ge_top5 = _mean(image, "logits", "accuracy") >= _mean(image, "topk5", "accuracy")
  soft_beats_text = all(lm[level][s]["heldout_nll"] < lm["text"][s]["heldout_nll"]
                        for level in LM_ORDER for s in lm["text"])
  means = [_mean(lm, level, "heldout_nll") for level in LM_ORDER]
  monotone = all(a <= b + TIE for a, b in zip(means, means[1:]))
  acc = lambda level: ", ".join(f"{image[level][s]['accuracy']:.4f}" for s in seeds)
  nll = lambda level: f"{_mean(lm, level, 'heldout_nll'):.4f}"
  return {
      "image (a)": {"paper": "API: top-5 log-probs > top-1 label, every seed", "holds": top5_beats_top1,
                    "detail": f"top-5 {acc('topk5')} vs top-1 {acc('text')}"},
      "image (b)": {"paper": "API: full logits ≥ top-5, seed mean", "holds": full_ge_top5,
                    "detail": f"full {_mean(image, 'logits', 'accuracy'):.4f} vs top-5 {_mean(image, 'topk5', 'accuracy'):.4f}"},
      "language (a)": {"paper": "every soft level beats text only (held-out NLL), every seed", "holds": soft_beats_text,
                       "detail": f"text {nll('text')} vs " + ", ".join(f"{lv} {nll(lv)}" for lv in LM_ORDER)},
      "language (b)": {"paper": f"full ≤ top-20 ≤ top-5 ≤ top-1 (mean held-out NLL, ties ≤ {TIE})", "holds": monotone,
                       "detail": " ≤ ".join(f"{m:.4f}" for m in means)},
  }


def run(workdir: str, seeds: list, data_dir: str = "") -> dict:
  """Both studies in `workdir` (image/, language/), their claims decided; returns the results."""
  report.cache_compilations(workdir)
  DATA_DIR[0] = data_dir
  root = pathlib.Path(workdir)
  results = {"image": image_study(root / "image", seeds), "language": language_study(root / "language", seeds)}
  results["claims"] = claims(results)
  return results


def markdown(results: dict) -> str:
  image, lm = results["image"], results["language"]
  lines = report.claims_table(results["claims"], issue=5) + ["", f"Image teacher accuracy {image['teacher_accuracy']:.4f}.", "",
           "| API returns (image) | accuracy per seed | mean | copy rate of the teacher's mistakes | student FLOPs |",
           "|---|---|---|---|---|"]
  for level, runs in image["runs"].items():
    accs = [r["accuracy"] for r in runs.values()]
    lines.append(f"| {LABELS['image'][level]} | {', '.join(f'{a:.4f}' for a in accs)} | {np.mean(accs):.4f} | "
                 f"{np.mean([r['copy_rate'] for r in runs.values()]):.3f} | "
                 f"{np.mean([r['cost']['student_flops'] for r in runs.values()]):.3g} |")
  lines += ["", f"Language teacher held-out NLL {lm['teacher_heldout_nll']:.4f} nats/byte.", "",
            "| access (language) | held-out NLL/byte per seed | mean | teacher-scored NLL/byte | distinct-4 | API queries | API tokens |",
            "|---|---|---|---|---|---|---|"]
  for level, runs in lm["runs"].items():
    nll = [r["heldout_nll"] for r in runs.values()]
    used = lm["labelled"].get(level, {}).get("ledger", {})
    lines.append(f"| {LABELS['language'][level]} | {', '.join(f'{v:.4f}' for v in nll)} | {np.mean(nll):.4f} | "
                 f"{np.mean([r['teacher_nll'] for r in runs.values()]):.4f} | "
                 f"{np.mean([r['distinct4'] for r in runs.values()]):.3f} | {used.get('api_queries', '–')} | "
                 f"{used.get('api_tokens', '–')} |")
  lines += ["", "| seed | target held-out NLL (top-20 student) | distillation FLOPs (labelling + student) | "
            "scratch FLOPs to reach it | scratch / distillation |", "|---|---|---|---|---|"]
  for seed, c in lm["cost_to_target"].items():
    scratch = f"{c['scratch']['flops']:.3g}" if c["scratch"] else "not reached"
    ratio = f"{c['flop_ratio']:.2f}×" if c["flop_ratio"] else "–"
    lines.append(f"| {seed} | {c['target']:.4f} | {c['distilled']['flops']:.3g} | {scratch} | {ratio} |")
  lines.append(f"\nTeacher training (not in the distillation column): {lm['teacher_cost']['flops']:.3g} FLOPs.")
  return "\n".join(lines) + "\n"


def plot(results: dict):
  plt = report.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
  for panel, study, key, title in ((left, "image", "accuracy", "Fashion-MNIST: test accuracy"),
                                   (right, "language", "heldout_nll", "KJV: held-out NLL (nats/byte)")):
    runs = results[study]["runs"]
    levels = list(runs)
    for x, level in enumerate(levels):
      values = [r[key] for r in runs[level].values()]
      first = x == 0  # one legend entry per kind of mark
      panel.scatter([x] * len(values), values, color="C0", label="seeds" if first else None)
      panel.plot([x - 0.2, x + 0.2], [np.mean(values)] * 2, color="C1", label="mean" if first else None)
      if key == "heldout_nll":
        panel.scatter([x], [np.mean([r["teacher_nll"] for r in runs[level].values()])], marker="x", color="C2",
                      label="teacher-scored NLL of samples (mean)" if first else None)
    panel.set_xticks(range(len(levels)), [LABELS[study][l] for l in levels], rotation=30, ha="right")
    panel.set_title(title)
    panel.legend(fontsize=7)
  return fig


def write(results: dict, workdir: str) -> str:
  return report.write(results, workdir, markdown, plot)


if __name__ == "__main__":
  report.define_flags("/tmp/distillery/api_distillation")
  app.run(lambda argv: report.main(lambda: run(flags.FLAGS.workdir, report.seeds(), flags.FLAGS.data_dir),
                                   write))
