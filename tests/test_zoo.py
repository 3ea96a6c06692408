"""The small-scale vision zoo (experiments/zoo): every method trained on 3 seeds, its claim decided
from the numbers (~8 min on 2 cores, the slowest test module).

The claims and thresholds are issue #3's, fixed before any run. A claim that did not hold in our
runs is reported NOT REPRODUCED in the table; these tests check that every verdict follows from
the numbers, and assert the claims that held, so a change that breaks one fails here.
"""
import json

import numpy as np
import pytest

from experiments.zoo import reproduce

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def zoo(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("zoo")
  results = reproduce.run(str(workdir), seeds=list(SEEDS), data_dir=data_dir, num_devices=1)
  print(reproduce.write(results, str(workdir)))
  return results, workdir


def mean(results, name):
  return float(np.mean(results["scores"][name]))


def test_every_student_run_has_every_seed_and_the_teachers_are_better(zoo):
  results, _ = zoo
  for name, _ in reproduce.STUDENT_RUNS:
    assert len(results["scores"][name]) == len(SEEDS), name
    assert all(0.0 < s <= 100.0 for s in results["scores"][name]), (name, results["scores"][name])
  # Distillation claims only mean something when the teacher beats the student it teaches.
  assert mean(results, "teacher") > mean(results, "ce")
  assert mean(results, "teacher_b") > mean(results, "ce")
  assert mean(results, "cnn_teacher") > mean(results, "cnn_ce")
  # Not asserted for the embedding teacher: on held-out digits its recall@1 was below the small
  # student's in our runs (57 vs 67 %), as RKD's paper reports students beating their teachers.


def test_verdicts_follow_from_the_numbers(zoo):
  """Recomputed here from the per-seed scores, independently of reproduce.summarize."""
  results, _ = zoo
  m = lambda name: mean(results, name)
  noise = max(np.std(results["scores"]["kd"], ddof=1), np.std(results["scores"]["kd_b"], ddof=1))
  expected = {
      "fitnets": m("thin_fitnets") >= m("thin_ce") + 0.3,
      "at": m("cnn_at") >= m("cnn_ce") + 0.2 and m("cnn_at_kd") >= m("cnn_kd") - 0.1,
      "rkd": m("embed_rkd") > m("embed_triplet"),
      "crd": m("crd") > m("ce") and m("crd_kd") >= m("kd"),
      "dkd": m("dkd") >= m("kd") - 0.2,
      "ban": m("ban_ensemble") >= m("ce"),
      "beyer": (m("consistent_long") > m("fixed_long") and m("funmatch_long") > m("fixed_long")
                and m("fixed_long") - m("fixed") <= 0.1 and m("funmatch_long") - m("funmatch") > 0.1),
      "ensemble": m("ensemble") >= max(m("kd"), m("kd_b")) - noise,
  }
  assert {k: c["holds"] for k, c in results["claims"].items()} == expected
  table = reproduce.markdown(results)
  for key, holds in expected.items():
    verdict = "**PASS**" if holds else "**NOT REPRODUCED**"
    assert any(line.startswith(f"| {key} |") and line.endswith(f"| {verdict} |") for line in table.splitlines())


def test_claims_that_held_still_hold(zoo):
  """What reproduced in our runs (experiments/zoo/README.md), asserted so a regression fails."""
  results, _ = zoo
  scores = results["scores"]
  assert all(k > c for k, c in zip(scores["kd"], scores["ce"])), (scores["kd"], scores["ce"])
  assert results["claims"]["rkd"]["holds"], results["claims"]["rkd"]
  assert results["claims"]["ensemble"]["holds"], results["claims"]["ensemble"]
  assert mean(results, "funmatch_long") > mean(results, "fixed_long")


def test_writes_table_json_and_plot(zoo):
  _, workdir = zoo
  assert set(json.loads((workdir / "results.json").read_text())["claims"]) == set(reproduce.PAPERS)
  assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
