"""The char-LM reproduction of GKD, MiniLLM (b) and DistiLLM (b) (experiments/gkd2024).

The fast test builds and validates every run's config. The slow module test reruns the whole
reproduction (one teacher, 3 seeds × 7 student runs, checkpoint-by-checkpoint evaluation) and
checks that every verdict follows from the numbers, recomputed here independently of
reproduce.summarize, and that the teacher beats the SFT student on held-out NLL.
"""
import json

import numpy as np
import pytest

from experiments.gkd2024 import config as gkd_config
from research import config as config_lib

SEEDS = (0, 1, 2)


def test_every_run_config_resolves():
  for run in gkd_config.RUNS:
    config = config_lib.resolve(gkd_config.get_config(f"{run},seed=1,teacher_dir=/t,init_dir=/w"))
    assert config.model.name == "decoder" and config.dataset.name == "kjv"
    if run in ("teacher", "warm"):
      assert config.dataset.prompt_len == 0 and not config.init_from
    else:
      assert config.dataset.prompt_len == gkd_config.PROMPT_LEN and config.init_from == "/w"
      assert config.num_steps == gkd_config.ARM_STEPS
      assert config.method.name == ("supervised" if run == "sft" else "token_kd")
      assert config.method.sample_temperature == 1.0
  lam = lambda run: gkd_config.get_config(f"{run},teacher_dir=/t").method.on_policy_fraction
  assert (lam("supervised_kd"), lam("gkd_mixed"), lam("gkd"), lam("minillm")) == (0.0, 0.5, 1.0, 1.0)
  distillm = gkd_config.get_config("distillm,teacher_dir=/t").method
  assert distillm.divergence == "skew_reverse_kl" and distillm.replay_size > 0 and distillm.replay_fresh < 1


@pytest.fixture(scope="module")
def repro(tmp_path_factory):
  from experiments.gkd2024 import reproduce  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("gkd2024")
  results = reproduce.run(str(workdir), seeds=list(SEEDS))
  print(reproduce.write(results, str(workdir)))
  return reproduce, results, workdir


@pytest.mark.slow
def test_every_arm_has_every_seed_and_the_teacher_is_better(repro):
  _, results, _ = repro
  for arm in ("warm",) + gkd_config.ARMS:
    for key in ("teacher_nll", "distinct4", "heldout_nll", "tail", "eval_loss"):
      assert len(results["runs"][arm][key]) == len(SEEDS), (arm, key)
  assert results["teacher"]["heldout_nll"] < np.mean(results["runs"]["sft"]["heldout_nll"])
  assert results["teacher_beats_student"]


@pytest.mark.slow
def test_verdicts_follow_from_the_numbers(repro):
  reproduce, results, workdir = repro
  runs = results["runs"]
  m = lambda arm, key="teacher_nll": float(np.mean(runs[arm][key]))
  base = min(m("sft"), m("supervised_kd"))
  gkd = (m("gkd") < m("gkd_mixed") < base and abs(m("supervised_kd") - m("sft")) < base - m("gkd_mixed")
         and min(m("gkd", "distinct4"), m("gkd_mixed", "distinct4")) >= 0.9 * m("sft", "distinct4"))
  minillm = all(r < f for r, f in zip(runs["minillm"]["tail"], runs["supervised_kd"]["tail"]))
  distillm = True
  for g, d in zip(results["curves"]["gkd"], results["curves"]["distillm"]):
    assert g["generations"][-1] == gkd_config.ARM_STEPS  # λ = 1 samples on every step
    reached = [gens for gens, nll in zip(d["generations"][1:], d["teacher_nll"][1:]) if nll <= g["teacher_nll"][-1]]
    distillm &= bool(reached) and reached[0] < g["generations"][-1]
  expected = {"gkd": gkd, "minillm": minillm, "distillm": distillm}
  assert {k: c["holds"] for k, c in results["claims"].items()} == expected
  table = reproduce.markdown(results)
  for key, holds in expected.items():
    verdict = "**PASS**" if holds else "**NOT REPRODUCED**"
    assert any(line.startswith(f"| {key} |") and line.endswith(f"| {verdict} |") for line in table.splitlines())
  assert set(json.loads((workdir / "results.json").read_text())["claims"]) == set(expected)
  assert (workdir / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
