r"""Small-scale reproduction of the vision distillation zoo: every claim on 3 seeds, one table.

  python -m experiments.zoo.reproduce --workdir=/tmp/distillery/zoo

Trains (or resumes) the runs of experiments/zoo/config.py and writes results.{json,md,png}. The
claims and their thresholds were fixed in issue #3 before any run; each is reported PASS or NOT
REPRODUCED from the numbers, never tuned afterwards.
"""
import pathlib

import jax
import numpy as np
import scipy.special
from absl import app, flags

from experiments import report
from experiments.zoo import config as zoo_config
from research.eval import classification
from research.losses import metric
from research.train.loop import train_and_evaluate


# (run, teacher): the teacher is a run name, "prev:<run>" (that run with the same seed) or None.
STUDENT_RUNS = (
    ("ce", None), ("kd", "teacher"), ("kd_b", "teacher_b"), ("ensemble", "teacher"),
    ("crd", "teacher"), ("crd_kd", "teacher"),
    ("dkd", "teacher"), ("pkt", "teacher"), ("sp", "teacher"),
    ("cnn_ce", None), ("cnn_kd", "cnn_teacher"), ("cnn_at", "cnn_teacher"), ("cnn_at_kd", "cnn_teacher"),
    ("thin_ce", None), ("thin_fitnets", "cnn_teacher"),
    ("ban1", "prev:ce"), ("ban2", "prev:ban1"),
    ("embed_triplet", None), ("embed_rkd", "embed_teacher"),
    ("fixed", "teacher"), ("consistent", "teacher"), ("funmatch", "teacher"),
    ("fixed_long", "teacher"), ("consistent_long", "teacher"), ("funmatch_long", "teacher"),
)
TEACHERS = ("teacher", "teacher_b", "embed_teacher", "cnn_teacher")
# Runs without a claim of their own, left out of the CI run to save time (`--extra` adds them).
EXTRA_RUNS = (("rkd", "teacher"),)

PAPERS = {
    "fitnets": "Romero et al. 2015 (FitNets)", "at": "Zagoruyko & Komodakis 2017 (AT)",
    "rkd": "Park et al. 2019 (RKD)", "crd": "Tian et al. 2020 (CRD)", "dkd": "Zhao et al. 2022 (DKD)",
    "ban": "Furlanello et al. 2018 (born-again)", "beyer": "Beyer et al. 2022 (function matching)",
    "ensemble": "Hinton et al. 2015 / multi-teacher KD",
}


def _config(run: str, seed: int, data_dir: str, num_devices: int, teacher_dir: str = "",
            ensemble_dir: str = ""):
  base, long = (run[:-5], True) if run.endswith("_long") else (run, False)
  base = {"ban1": "ban", "ban2": "ban", "kd_b": "kd"}.get(base, base)
  config = zoo_config.get_config(f"{base},seed={seed},teacher_dir={teacher_dir},"
                                 f"ensemble_dir={ensemble_dir},long={long}")
  config.dataset.data_dir = data_dir
  config.parallel.num_devices = num_devices
  return config


def recall_at_1(workdir: str) -> float:
  """Leave-one-out recall@1 of a run's embeddings on the test images of the held-out digits."""
  config, model, variables = classification.load_run(workdir)
  embeddings, labels = classification.predict(model, variables, config.dataset, config.dataset.eval_split)
  held_out = np.isin(labels, zoo_config.HELD_OUT)
  return float(metric.recall_at_k(embeddings[held_out], labels[held_out], k=1))


def _score(run: str, result: dict, workdir: str) -> float:
  """Test accuracy in % (embedding runs: recall@1 in % on held-out classes)."""
  return 100.0 * (recall_at_1(workdir) if run.startswith("embed") else result["accuracy"])


def ensemble_accuracy(workdirs) -> float:
  """Test accuracy (%) of the average of the runs' probabilities."""
  probs, labels = 0.0, None
  for workdir in workdirs:
    config, model, variables = classification.load_run(workdir)
    logits, labels = classification.predict(model, variables, config.dataset, config.dataset.eval_split)
    probs = probs + scipy.special.softmax(logits, axis=-1)
  return 100.0 * float(np.mean(np.argmax(probs, -1) == labels))


def run(workdir: str, seeds, data_dir: str = "", num_devices: int = -1, extra: bool = False) -> dict:
  """Trains (or resumes) every run and returns the results dict with the claims' verdicts."""
  root = pathlib.Path(workdir)
  # Seeds of one run compile the same programs: keep them on disk instead of recompiling.
  jax.config.update("jax_compilation_cache_dir", str(root / "jax_cache"))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  scores = {}
  for name in TEACHERS:
    result = train_and_evaluate(_config(name, 0, data_dir, num_devices), str(root / name))
    scores[name] = [_score(name, result, str(root / name))]
  for seed in seeds:
    for name, teacher in STUDENT_RUNS + (EXTRA_RUNS if extra else ()):
      teacher_dir = ""
      if teacher:
        teacher_dir = str(root / (f"{teacher[5:]}_seed{seed}" if teacher.startswith("prev:") else teacher))
      ensemble_dir = str(root / "teacher_b") if name == "ensemble" else ""
      run_dir = str(root / f"{name}_seed{seed}")
      result = train_and_evaluate(_config(name, seed, data_dir, num_devices, teacher_dir, ensemble_dir),
                                  run_dir)
      scores.setdefault(name, []).append(_score(name, result, run_dir))
    scores.setdefault("ban_ensemble", []).append(ensemble_accuracy(
        [str(root / f"{g}_seed{seed}") for g in ("ce", "ban1", "ban2")]))
  return summarize(scores)


def _mean(scores, name) -> float:
  return float(np.mean(scores[name]))


def summarize(scores: dict) -> dict:
  """The claims of issue #3, each (holds, the numbers it was decided on)."""
  m = lambda name: _mean(scores, name)
  noise = max(float(np.std(scores["kd"], ddof=1)), float(np.std(scores["kd_b"], ddof=1)))
  fixed_gain, funmatch_gain = m("fixed_long") - m("fixed"), m("funmatch_long") - m("funmatch")
  claims = {
      "fitnets": (m("thin_fitnets") - m("thin_ce") >= 0.3,
                  f"hints {m('thin_fitnets'):.2f} vs scratch {m('thin_ce'):.2f} (need ≥ +0.3 pt)"),
      "at": (m("cnn_at") - m("cnn_ce") >= 0.2 and m("cnn_at_kd") >= m("cnn_kd") - 0.1,
             f"AT {m('cnn_at'):.2f} vs CE {m('cnn_ce'):.2f} (need ≥ +0.2 pt); AT+KD {m('cnn_at_kd'):.2f} "
             f"vs KD {m('cnn_kd'):.2f} (need ≥ −0.1 pt)"),
      "rkd": (m("embed_rkd") > m("embed_triplet"),
              f"recall@1 triplet+RKD {m('embed_rkd'):.2f} vs triplet {m('embed_triplet'):.2f} (need >)"),
      "crd": (m("crd") > m("ce") and m("crd_kd") >= m("kd"),
              f"CRD {m('crd'):.2f} vs CE {m('ce'):.2f} (need >); CRD+KD {m('crd_kd'):.2f} vs KD "
              f"{m('kd'):.2f} (need ≥)"),
      "dkd": (m("dkd") >= m("kd") - 0.2, f"DKD {m('dkd'):.2f} vs KD {m('kd'):.2f} (need ≥ −0.2 pt)"),
      "ban": (m("ban_ensemble") >= m("ce"),
              f"ensemble of generations {m('ban_ensemble'):.2f} vs generation 0 {m('ce'):.2f} (need ≥); "
              f"generation 1 {m('ban1'):.2f}, 2 {m('ban2'):.2f}"),
      "beyer": (m("consistent_long") > m("fixed_long") and m("funmatch_long") > m("fixed_long")
                and fixed_gain <= 0.1 and funmatch_gain > 0.1,
                f"long: fixed {m('fixed_long'):.2f}, consistent {m('consistent_long'):.2f}, function "
                f"matching {m('funmatch_long'):.2f} (need both > fixed); short→long gain: fixed "
                f"{fixed_gain:+.2f} (need ≤ +0.1), function matching {funmatch_gain:+.2f} (need > +0.1)"),
      "ensemble": (m("ensemble") >= max(m("kd"), m("kd_b")) - noise,
                   f"ensemble-taught {m('ensemble'):.2f} vs best single-teacher student "
                   f"{max(m('kd'), m('kd_b')):.2f} − noise {noise:.2f} (seed std)"),
  }
  return {"scores": scores, "teacher_beats_student": m("teacher") > m("ce"),
          "claims": {k: {"holds": bool(v[0]), "detail": v[1], "paper": PAPERS[k]} for k, v in claims.items()}}


ROWS = (  # (label, run, method file)
    ("MLP teacher 800-800", "teacher", "—"), ("second MLP teacher (other init)", "teacher_b", "—"),
    ("MLP student 300-300, CE", "ce", "research/methods/__init__.py"),
    ("KD (T 4)", "kd", "research/methods/__init__.py"), ("KD from teacher_b", "kd_b", "research/methods/__init__.py"),
    ("KD from both teachers (averaged)", "ensemble", "research/train/step.py"),
    ("CRD", "crd", "research/methods/crd.py"), ("CRD + KD", "crd_kd", "research/methods/crd.py"),
    ("DKD", "dkd", "research/methods/dkd.py"), ("PKT", "pkt", "research/methods/relational.py"),
    ("SP", "sp", "research/methods/relational.py"), ("RKD (classification)", "rkd", "research/methods/relational.py"),
    ("CNN teacher (16, 32)", "cnn_teacher", "—"), ("CNN student (8, 16), CE", "cnn_ce", "—"),
    ("CNN student, KD", "cnn_kd", "research/methods/__init__.py"),
    ("CNN student, AT", "cnn_at", "research/methods/relational.py"),
    ("CNN student, AT + KD", "cnn_at_kd", "research/methods/relational.py"),
    ("thin-deep CNN student (4, 8)×3, CE", "thin_ce", "—"), ("thin-deep student, FitNets hints → KD", "thin_fitnets",
                                               "research/methods/hint.py"),
    ("born-again generation 1 (of the MLP student)", "ban1", "research/methods/__init__.py"),
    ("born-again generation 2", "ban2", "research/methods/__init__.py"),
    ("ensemble of generations 0–2", "ban_ensemble", "experiments/zoo/reproduce.py"),
    ("embedding teacher, triplet (recall@1)", "embed_teacher", "research/losses/metric.py"),
    ("embedding student, triplet (recall@1)", "embed_triplet", "research/losses/metric.py"),
    ("embedding student, triplet + RKD (recall@1)", "embed_rkd", "research/methods/relational.py"),
    ("Beyer fixed teacher, short", "fixed", "research/data/pipeline.py"),
    ("Beyer consistent, short", "consistent", "research/train/step.py"),
    ("Beyer function matching, short", "funmatch", "research/train/step.py"),
    ("Beyer fixed teacher, long (10×)", "fixed_long", "research/data/pipeline.py"),
    ("Beyer consistent, long (10×)", "consistent_long", "research/train/step.py"),
    ("Beyer function matching, long (10×)", "funmatch_long", "research/train/step.py"),
)


def markdown(results: dict) -> str:
  scores = results["scores"]
  lines = ["| run | method file | test accuracy % (recall@1 % for embeddings), per seed | mean |",
           "|---|---|---|---|"]
  for label, run_name, path in ROWS:
    if run_name in scores:
      values = ", ".join(f"{v:.1f}" for v in scores[run_name])
      lines.append(f"| {label} | {path} | {values} | {np.mean(scores[run_name]):.2f} |")
  lines += [""] + report.claims_table(results["claims"], issue=3, numbers="numbers (means over seeds)")
  lines.append("")
  lines.append(f"Teacher beats the CE student: {results['teacher_beats_student']}.")
  return "\n".join(lines) + "\n"


def plot(results: dict):
  plt = report.pyplot()
  scores = results["scores"]
  names = [r for _, r, _ in ROWS if r in scores and not r.startswith(("embed", "fixed", "consistent", "funmatch"))]
  beyer = ["fixed", "consistent", "funmatch"]
  fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [3, 1]})
  for i, name in enumerate(names):
    left.scatter([i] * len(scores[name]), scores[name], color="tab:blue", s=12)
    left.scatter([i], [np.mean(scores[name])], color="k", marker="_", s=300)
  left.set(xticks=range(len(names)), ylabel="test accuracy %", title="Zoo on MNIST-5k (3 seeds; bar = mean)")
  left.set_xticklabels(names, rotation=60, fontsize=8)
  for name in beyer:
    right.plot([0, 1], [np.mean(scores[name]), np.mean(scores[name + "_long"])], marker="o", label=name)
  right.set(xticks=[0, 1], xticklabels=["short", "long (10×)"], ylabel="test accuracy %",
            title="Beyer et al. 2022, transfer set")
  right.legend(fontsize=8)
  return fig


def write(results: dict, workdir: str) -> str:
  return report.write(results, workdir, markdown, plot)


def _define_flags() -> None:
  """Flags exist only when this module is the program, so tests can import it beside other scripts."""
  report.define_flags("/tmp/distillery/zoo", num_devices=-1)
  flags.DEFINE_bool("extra", False, "Also train the runs without a claim (RKD on classification).")

def main(argv):
  del argv
  args = flags.FLAGS
  report.main(lambda: run(args.workdir, report.seeds(), args.data_dir, args.num_devices, extra=args.extra),
              write)

if __name__ == "__main__":
  _define_flags()
  app.run(main)
