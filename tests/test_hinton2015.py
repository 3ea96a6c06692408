"""The small-scale Hinton et al. 2015 reproduction: its claims, checked on 3 seeds (~5 min on 2 cores).

Claims (fixed in issue #2 before the runs): the distilled 800-800 student has fewer test errors
than the hard-label one on every seed, by ≥ 5 per 1,000 on average, closing ≥ 40 % of the
student–teacher gap; the student that never saw a 3 gets ≥ 90 % of test 3s right once its
class-3 bias is chosen on validation data, with total errors ≤ 1.5× the KD student's.
"""
import json

import pytest

from experiments.hinton2015 import reproduce


@pytest.fixture(scope="module")
def results(data_dir, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("hinton2015")
  results = reproduce.run(str(workdir), seeds=[0, 1, 2], scale="small", data_dir=data_dir, num_devices=1)
  table = reproduce.write(results, str(workdir))
  print(table)
  return results, workdir


def test_distilled_student_beats_hard_label_student(results):
  results, _ = results
  hard, kd = results["student_hard_errors_per_1000"], results["student_kd_errors_per_1000"]
  assert all(k < h for k, h in zip(kd, hard)), (hard, kd)
  assert sum(hard) / 3 - sum(kd) / 3 >= reproduce.MIN_MEAN_GAP_PER_1000, (hard, kd)
  assert results["gap_closed"] >= reproduce.MIN_GAP_CLOSED, results["gap_closed"]
  assert results["teacher_errors_per_1000"] < min(hard), "teacher must beat the baseline student"
  assert results["claims"]["kd_beats_hard"]


def test_omitted_three(results):
  """What reproduces robustly: never-seen 3s are mostly recognised with no correction, and a
  bias chosen on validation data raises their recall without hurting total errors.

  The issue's stronger claim (>= 90 % of 3s on every seed) did NOT reproduce with the protocol
  fixed in advance (bias = first minimiser of validation errors, ~40 validation 3s): seeds
  0/1/2 gave 92 % / 87 % / 91 % on our machine. It is reported as NOT REPRODUCED in the
  results table; `test_claim_verdicts_match_the_numbers` checks that report is honest.
  """
  results, _ = results
  kd = dict(zip(results["omit3"], results["student_kd_errors_per_1000"]))
  for seed, omit in results["omit3"].items():
    assert omit["bias0"]["recall_3"] >= 0.5, (seed, omit["bias0"])
    assert omit["biased"]["recall_3"] >= omit["bias0"]["recall_3"], (seed, omit)
    assert omit["biased"]["errors"] <= omit["bias0"]["errors"], (seed, omit)
    assert omit["biased"]["errors"] <= reproduce.MAX_OMIT3_ERRORS_VS_KD * kd[seed], (seed, omit["biased"])
    val = omit["val_errors_by_bias"]  # the bias is the first minimiser of validation errors
    assert val[omit["bias"]] == min(val.values())
    assert all(v > val[omit["bias"]] for b, v in val.items() if b < omit["bias"])


def test_claim_verdicts_match_the_numbers(results):
  results, workdir = results
  kd = dict(zip(results["omit3"], results["student_kd_errors_per_1000"]))
  holds = all(o["biased"]["recall_3"] >= reproduce.MIN_OMIT3_RECALL
              and o["biased"]["errors"] <= reproduce.MAX_OMIT3_ERRORS_VS_KD * kd[s]
              for s, o in results["omit3"].items())
  assert results["claims"]["omit3_bias_recovers_threes"] == holds
  expected = "PASS" if holds else "NOT REPRODUCED"
  table = reproduce.markdown(results)
  assert f"every seed: **{expected}**" in table


def test_writes_table_json_and_plot(results):
  _, workdir = results
  assert json.loads((workdir / "results.json").read_text())["claims"]
  table = (workdir / "results.md").read_text()
  assert "PASS" in table or "NOT REPRODUCED" in table
  assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
