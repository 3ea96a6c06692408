"""Assertions over pytrees that name the first differing leaf by its path."""
import jax
import numpy as np


def _pairs(actual, expected, what: str):
  actual_flat, actual_def = jax.tree_util.tree_flatten_with_path(actual)
  expected_flat, expected_def = jax.tree_util.tree_flatten_with_path(expected)
  assert actual_def == expected_def, f"{what}: tree structures differ"
  for (path, a), (_, e) in zip(actual_flat, expected_flat):
    a, e = np.asarray(a), np.asarray(e)
    name = f"{what}{jax.tree_util.keystr(path)}"
    assert a.shape == e.shape and a.dtype == e.dtype, name
    yield name, a, e


def assert_trees_close(actual, expected, rtol: float, atol: float, what: str = "") -> None:
  for name, a, e in _pairs(actual, expected, what):
    np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=name)


def assert_trees_bitwise_equal(actual, expected, what: str = "") -> None:
  for name, a, e in _pairs(actual, expected, what):
    assert a.tobytes() == e.tobytes(), f"{name} differs"
