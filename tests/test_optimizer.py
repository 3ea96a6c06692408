"""Learning-rate schedules: hand-computed values around every boundary, with and without warm-up."""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from research import config as config_lib
from research.errors import UserError
from research.train import optimizer


def _opt(**overrides):
  return config_lib.build({"optimizer": overrides}).optimizer


def _lrs(total_steps, steps, **overrides):
  schedule = optimizer.learning_rate(_opt(**overrides), total_steps)
  return [float(schedule(s)) for s in steps]


def test_step_schedule_decays_at_each_fraction():
  # total 100, boundaries round(0.5·100)=50 and round(0.8·100)=80; the boundary step already decays.
  lrs = _lrs(100, [0, 49, 50, 51, 79, 80, 99, 100], schedule="step", lr=1.0, decay_at=(0.5, 0.8),
             decay_factor=0.1)
  np.testing.assert_allclose(lrs, [1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01, 0.01], rtol=1e-6)


def test_step_schedule_with_warmup_keeps_absolute_boundaries():
  # Warm-up 0 → 1 over 10 steps (step 5 = 0.5), then the same absolute boundaries 50 and 80.
  lrs = _lrs(100, [0, 5, 9, 10, 49, 50, 79, 80], schedule="step", lr=1.0, decay_at=(0.5, 0.8),
             decay_factor=0.1, warmup_steps=10)
  np.testing.assert_allclose(lrs, [0.0, 0.5, 0.9, 1.0, 1.0, 0.1, 0.1, 0.01], rtol=1e-6)


def test_step_schedule_crd_recipe():
  # CIFAR-100, batch 64: 781 steps an epoch × 240 = 187,440; epochs 150/180/210 = 117,150/140,580/164,010.
  total = 781 * 240
  assert optimizer.step_boundaries((0.625, 0.75, 0.875), total) == [781 * 150, 781 * 180, 781 * 210]
  steps = [117149, 117150, 140579, 140580, 164009, 164010, total - 1]
  lrs = _lrs(total, steps, schedule="step", lr=0.05, decay_at=(0.625, 0.75, 0.875), decay_factor=0.1)
  np.testing.assert_allclose(lrs, [0.05, 0.005, 0.005, 5e-4, 5e-4, 5e-5, 5e-5], rtol=1e-5)


def test_step_boundaries_round_and_merge():
  # round(0.33·10) = 3.
  np.testing.assert_allclose(_lrs(10, [2, 3], schedule="step", lr=1.0, decay_at=(0.33,), decay_factor=0.5),
                             [1.0, 0.5])
  # On 3 steps, 0.625 and 0.75 both round to step 2: both factors apply there.
  np.testing.assert_allclose(_lrs(3, [1, 2], schedule="step", lr=1.0, decay_at=(0.625, 0.75),
                                  decay_factor=0.5), [1.0, 0.25])


def test_step_boundary_inside_warmup_applies_when_warmup_ends():
  lrs = _lrs(100, [5, 10, 49, 50], schedule="step", lr=1.0, decay_at=(0.05, 0.5), decay_factor=0.1,
             warmup_steps=10)
  np.testing.assert_allclose(lrs, [0.5, 0.1, 0.1, 0.01], rtol=1e-6)


def test_sgd_updates_use_the_step_schedule():
  # Update k uses schedule(k − 1): with the boundary at step 2, updates 1 and 2 use lr, update 3 lr·0.1.
  tx = optimizer.build(_opt(name="sgd", momentum=0.0, schedule="step", lr=1.0, decay_at=(0.5,),
                            decay_factor=0.1), total_steps=4)
  params = jnp.zeros(())
  state = tx.init(params)
  deltas = []
  for _ in range(3):
    updates, state = tx.update(jnp.ones(()), state, params)
    deltas.append(float(updates))
  np.testing.assert_allclose(deltas, [-1.0, -1.0, -0.1], rtol=1e-6)


def test_cosine_and_constant_unchanged():
  np.testing.assert_allclose(_lrs(100, [0, 50, 100], schedule="cosine", lr=1.0), [1.0, 0.5, 0.0], atol=1e-6)
  # Warm-up 10, then cosine over the remaining 90 steps: halfway at step 55.
  np.testing.assert_allclose(_lrs(100, [5, 10, 55, 100], schedule="cosine", lr=1.0, warmup_steps=10),
                             [0.5, 1.0, 0.5, 0.0], atol=1e-6)
  np.testing.assert_allclose(_lrs(100, [0, 50, 99], schedule="constant", lr=0.3), [0.3] * 3, rtol=1e-6)
  np.testing.assert_allclose(_lrs(100, [2, 4, 99], schedule="constant", lr=1.0, warmup_steps=4),
                             [0.5, 1.0, 1.0], rtol=1e-6)
  # decay_at belongs to the step schedule; cosine ignores it.
  np.testing.assert_allclose(_lrs(100, [50], schedule="cosine", lr=1.0, decay_at=(0.5,)), [0.5], atol=1e-6)


def test_cosine_matches_optax():
  schedule = optimizer.learning_rate(_opt(schedule="cosine", lr=0.1), 1000)
  reference = optax.cosine_decay_schedule(0.1, 1000)
  for step in (0, 1, 333, 999):
    np.testing.assert_allclose(float(schedule(step)), float(reference(step)), rtol=1e-6)


@pytest.mark.parametrize("decay_at", [(), (0.0, 0.5), (0.5, 1.0), (0.75, 0.5), (0.5, 0.5), (-0.1,), (1.5,)])
def test_bad_decay_at_is_a_user_error(decay_at):
  with pytest.raises(UserError, match=r"config\.optimizer\.decay_at"):
    optimizer.build(_opt(schedule="step", decay_at=decay_at), 100)


def test_bad_decay_factor_and_warmup_are_user_errors():
  with pytest.raises(UserError, match=r"config\.optimizer\.decay_factor"):
    optimizer.build(_opt(schedule="step", decay_at=(0.5,), decay_factor=0.0), 100)
  with pytest.raises(UserError, match=r"config\.optimizer\.warmup_steps"):
    optimizer.build(_opt(warmup_steps=-1), 100)
