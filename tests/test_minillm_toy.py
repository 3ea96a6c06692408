"""MiniLLM claim (a) on the 1-D toy (experiments/minillm2024/toy.py): reverse KL mode-seeking, forward
KL mode-covering.

The claim and its thresholds are issue #4's, and the steps / learning rate were fixed before the first
run. In our run the claim held on seeds 0 and 1 but NOT on seed 2, whose reverse-KL fit stops in a
broad local minimum (experiments/minillm2024/README.md). These tests check that the verdict follows
from the numbers, assert what held (so a regression fails), and pin the seed-2 outcome so that a change
that silently turns it into a PASS is noticed and the README updated.
"""
import json

import numpy as np
import pytest

from experiments.minillm2024 import toy


@pytest.fixture(scope="module")
def results():
  out = toy.run_all(toy.SEEDS, toy.STEPS)
  print("\n" + toy.markdown(out))
  return out


def test_verdict_follows_from_the_numbers(results):
  claim = results["claim"]
  reverse = [r["off_support_mass"] for r in results["fits"]["reverse_kl"]]
  forward = [r["off_support_mass"] for r in results["fits"]["forward_kl"]]
  assert claim["reverse_kl"] == reverse and claim["forward_kl"] == forward
  assert claim["holds"] == (max(reverse) < 0.05 and min(forward) > 0.25)
  verdict = "**PASS**" if claim["holds"] else "**NOT REPRODUCED**"
  assert any(line.startswith("| minillm (a) |") and line.endswith(f"| {verdict} |")
             for line in toy.markdown(results).splitlines())


def test_what_reproduced(results):
  """Forward KL covers on every seed; reverse KL seeks a mode on seeds 0, 1 and at the global optimum."""
  fits = results["fits"]
  forward = [r["off_support_mass"] for r in fits["forward_kl"]]
  assert all(m > 0.25 for m in forward), forward
  assert all(r["off_support_mass"] < 0.05 for r in fits["reverse_kl"][:2])
  for r in fits["reverse_kl"][:2]:  # the heavier mode (+0.5, mass 0.6), matched exactly
    assert r["mu"] == pytest.approx(0.5, abs=1e-2) and r["sigma"] == pytest.approx(toy.WIDTH, rel=0.05)
  assert results["grid"]["reverse_kl"]["off_support_mass"] < 0.05
  assert results["grid"]["forward_kl"]["off_support_mass"] > 0.25


def test_seed_2_reverse_kl_stalls_in_a_broad_local_minimum(results):
  """The NOT REPRODUCED part: from μ 0.08, σ 0.50 Adam on reverse KL widens the student instead."""
  r = results["fits"]["reverse_kl"][2]
  assert r["off_support_mass"] > 0.25 and r["sigma"] > 0.5
  assert r["loss_final"] > 5 * results["grid"]["reverse_kl"]["loss"]  # far above the global optimum
  assert not results["claim"]["holds"]


def test_fitted_students_have_lower_divergence_than_at_init(results):
  for divergence in toy.DIVERGENCES:
    for r in results["fits"][divergence]:
      assert np.isfinite(r["loss_final"]) and r["loss_final"] < r["loss_init"], r
      assert r["loss_final"] <= r["loss_min_during_fit"] + 1e-4, r  # converged, not oscillating
      assert abs(sum(r["student_probs"]) - 1) < 1e-5


def test_teacher_is_bimodal_with_the_stated_masses(results):
  x, p = np.asarray(results["bins"]), np.asarray(results["teacher_probs"])
  assert len(x) == toy.NUM_BINS and x.min() > -1 and x.max() < 1
  assert p[x < 0].sum() == pytest.approx(0.4, abs=1e-3) and p[x > 0].sum() == pytest.approx(0.6, abs=1e-3)
  assert 0.2 < (p < toy.OFF_SUPPORT).mean() < 0.8  # the off-support region is neither empty nor everything


def test_run_rejects_unknown_divergence():
  with pytest.raises(ValueError, match="divergence"):
    toy.run(0, "jsd")


def test_write(results, tmp_path):
  table = toy.write(results, str(tmp_path))
  assert "minillm (a)" in table
  assert json.loads((tmp_path / "results.json").read_text())["setup"]["steps"] == toy.STEPS
  assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
