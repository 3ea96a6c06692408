"""Synthetic text tasks: determinism, disjoint splits, exact answers checked independently, TFDS round trip."""
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from research.data import synthetic

_STEP = re.compile(r"^(\d)\+(\d)(\+1)?=(\d+) c([01])$")


def _check_rationale(a: int, b: int, rationale: str):
  """Re-parses a rationale and verifies every column step with Python int arithmetic."""
  *steps, final = rationale.split(";")
  assert final == f"={a + b}"
  assert len(steps) == max(len(str(a)), len(str(b)))
  carry = 0
  for i, step in enumerate(steps):
    match = _STEP.match(step)
    assert match, step
    x, y, plus_one, total, carry_out = match.groups()
    assert int(x) == a // 10 ** i % 10 and int(y) == b // 10 ** i % 10
    assert bool(plus_one) == bool(carry)
    assert int(total) == int(x) + int(y) + carry
    assert int(carry_out) == int(total) // 10
    carry = int(carry_out)
  digits = [int(re.match(r"^.*=(\d+) ", s).group(1)) % 10 for s in steps]
  assert int("".join(map(str, ([carry] if carry else []) + digits[::-1]))) == a + b


def _decode(record: dict) -> dict:
  return {k: v.decode() if isinstance(v, bytes) else v for k, v in record.items()}


def test_arithmetic_deterministic_and_disjoint():
  first, again = synthetic.arithmetic_split_pairs(), synthetic.arithmetic_split_pairs()
  assert first == again
  assert synthetic.arithmetic_split_pairs(seed=5)["train"] != first["train"]
  assert {k: len(v) for k, v in first.items()} == {"train": 8000, "test": 1000}
  unordered = {k: {(min(p), max(p)) for p in v} for k, v in first.items()}
  assert len(unordered["train"]) == 8000 and len(unordered["test"]) == 1000
  assert not unordered["train"] & unordered["test"]
  operands = np.array(first["train"]).ravel()
  assert operands.min() >= 10 and operands.max() <= 999
  assert 0.4 < np.mean(operands >= 100) < 0.6  # 2 and 3 digits equally likely


def test_arithmetic_answers_and_rationales():
  examples = list(synthetic.arithmetic_examples("train")) + list(synthetic.arithmetic_examples("test"))
  assert all(len(e["completion"]) <= 4 and len(e["rationale"]) < 60 for e in examples)
  carries = 0
  for e in examples:
    a, b = map(int, e["prompt"][:-1].split("+"))
    assert e["prompt"] == f"{a}+{b}="
    assert e["completion"] == str(a + b) == synthetic.answer_of(e["prompt"])
    assert e["rationale"] == synthetic.rationale_of(e["prompt"])
    _check_rationale(a, b, e["rationale"])
    carries += " c1" in e["rationale"]
  assert 0.3 < carries / len(examples) < 0.95  # carries are common but not universal
  assert synthetic.rationale_of("37+85=") == "7+5=12 c1;3+8+1=12 c1;=122"
  assert synthetic.rationale_of("437+85=") == "7+5=12 c1;3+8+1=12 c1;4+0+1=5 c0;=522"
  assert synthetic.answer_from_rationale("7+5=12 c1;3+8+1=12 c1;=122") == "122"


def test_arithmetic_checkers():
  assert synthetic.exact_match("37+85=", "122")
  assert synthetic.exact_match("37+85=", " 122\n")
  assert not synthetic.exact_match("37+85=", "121")
  assert not synthetic.exact_match("37+85=", "122 and more")
  assert synthetic.exact_match("[answer] 37+85=", "122")
  assert synthetic.exact_match("[explain] 37+85=", "7+5=12 c1;3+8+1=12 c1;=122")
  assert not synthetic.exact_match("[explain] 37+85=", "122")
  assert synthetic.parse_question("[explain] 37+85=") == (37, 85, "explain")
  with pytest.raises(ValueError):
    synthetic.answer_of("37*85=")


def test_multitask_pairing():
  plain = list(synthetic.arithmetic_examples("train"))
  multi = list(synthetic.arithmetic_multitask_examples("train"))
  assert len(multi) == 2 * len(plain)
  for i, e in enumerate(plain):
    answer, explain = multi[2 * i], multi[2 * i + 1]
    assert answer == {"prompt": "[answer] " + e["prompt"], "completion": e["completion"],
                      "task": "answer", "question": e["prompt"]}
    assert explain == {"prompt": "[explain] " + e["prompt"], "completion": e["rationale"],
                       "task": "explain", "question": e["prompt"]}
  n = 37  # 'train[:2N]' is exactly the first N questions, each in both tasks
  assert [m["question"] for m in multi[:2 * n]] == [e["prompt"] for e in plain[:n] for _ in range(2)]


def test_styled_deterministic_disjoint_and_proportions():
  first = synthetic.styled_split_examples()
  assert first == synthetic.styled_split_examples()
  assert synthetic.styled_split_examples(seed=7)["train"] != first["train"]
  assert {k: len(v) for k, v in first.items()} == {"train": 10000, "test": 1000}
  test_sources = [e["prompt"] for e in first["test"]]
  assert len(set(test_sources)) == 1000
  assert not set(test_sources) & {e["prompt"] for e in first["train"]}
  for split, examples in first.items():
    lengths = np.array([len(e["prompt"].split()) for e in examples])
    assert set(lengths) == {3, 4, 5, 6}
    styles = np.array([e["style"] for e in examples])
    n, p = len(styles), synthetic.STYLE_A_PROB
    assert abs(np.sum(styles == "A") - n * p) <= 4 * np.sqrt(n * p * (1 - p)), split
    for e in examples:
      digits = [int(t) for t in e["prompt"].split()]
      words = synthetic.STYLES[e["style"]]
      assert e["completion"] == " ".join(words[d] for d in digits)
      assert synthetic.is_valid(e["prompt"], e["completion"])
      assert len(e["completion"]) <= 41


def test_styled_checkers():
  assert synthetic.renderings("4 1 7") == ("four one seven", "cuatro uno siete")
  assert synthetic.is_valid("4 1 7", "four one seven")
  assert synthetic.is_valid("4 1 7", " cuatro  uno siete\n")
  assert not synthetic.is_valid("4 1 7", "four uno seven")  # style switch mid-sentence
  assert not synthetic.is_valid("4 1 7", "cuatro one siete")
  assert not synthetic.is_valid("4 1 7", "four one eight")
  assert not synthetic.is_valid("4 1 7", "four one")
  assert synthetic.is_valid("6 6 6", "six six six") and not synthetic.is_valid("6 6 6", "six seis six")
  with pytest.raises(ValueError):
    synthetic.renderings("4 12")


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("synthetic"))
  for builder in synthetic.BUILDERS.values():
    builder(data_dir=path, file_format="array_record").download_and_prepare()
  return path


@pytest.mark.parametrize("name,counts,features", [
    ("arithmetic", (8000, 1000), {"prompt", "completion", "rationale"}),
    ("arithmetic_multitask", (16000, 2000), {"prompt", "completion", "task", "question"}),
    ("styled_seq2seq", (10000, 1000), {"prompt", "completion", "style"}),
])
def test_builders_round_trip(synthetic_dir, name, counts, features):
  builder = tfds.builder(name, data_dir=synthetic_dir)
  assert builder.is_prepared()
  assert set(builder.info.features) == features
  assert all(isinstance(f, tfds.features.Text) for f in builder.info.features.values())
  generators = {"arithmetic": synthetic.arithmetic_examples,
                "arithmetic_multitask": synthetic.arithmetic_multitask_examples,
                "styled_seq2seq": lambda split: synthetic.styled_split_examples()[split]}
  for split, count in zip(("train", "test"), counts):
    source = tfds.data_source(name, split=split, data_dir=synthetic_dir)
    assert len(source) == count
    expected = list(generators[name](split))
    stored = [_decode(r) for r in source.__getitems__(list(range(count)))]
    assert stored == expected  # same examples, in generation order
  head = tfds.data_source(name, split="train[:10]", data_dir=synthetic_dir)
  assert [_decode(r) for r in head.__getitems__(list(range(10)))] == list(generators[name]("train"))[:10]
