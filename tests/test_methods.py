"""The method framework's maths: Method.loss of every method on small random arrays, checked
against float64 numpy references (or, for terms built on research.losses functions that are
themselves tested against loop references, against those functions), plus CRD's memory banks
and normalisation constants under 1- and 8-device shard_map, teacher ensembles and mixup.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from research import config as config_lib
from research import losses, methods, models
from research.errors import UserError
from research.losses import contrastive
from research.methods import taps
from research.train import step as step_lib
from research.train.state import init_variables

SHAPE = (8, 8, 1)
B, CLASSES = 8, 10
RNG = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _reseed():
  """Every test draws the same numbers whatever ran before it (RNG is reset to seed 0)."""
  RNG.bit_generator.state = np.random.default_rng(0).bit_generator.state


def _shapes(model) -> dict:
  variables = jax.eval_shape(lambda: init_variables(model, SHAPE, jax.random.PRNGKey(0)))
  return taps.available(model, variables, SHAPE)


# Tap shapes on 8×8 digits: student CNN (4, 8), teacher CNN (8, 16, 32) (one more stage).
STUDENT = _shapes(models.CNN((4, 8), CLASSES))
TEACHER = _shapes(models.CNN((8, 16, 32), CLASSES))
MLP = _shapes(models.MLP((16,), CLASSES))


def _method(student_shapes=STUDENT, teacher_shapes=TEACHER, num_train=1000, **method):
  return methods.build(config_lib.build({"method": method}).method, student_shapes, teacher_shapes, num_train)


def _features(shapes: dict, names, batch=B, rng=RNG) -> dict:
  """float64 random features for `names` (+ logits), shaped as the model's taps."""
  return {name: rng.standard_normal((batch,) + tuple(shapes[name])) for name in set(names) | {"logits"}}


def _context(labels, step=0, **extra):
  return {"labels": labels, "mix": None, "index": None, "step": step, "rng": jax.random.PRNGKey(0),
          "step_rng": jax.random.PRNGKey(1), **extra}


def _loss(method, student, teacher, context, adapters=None, state=None):
  """Method.loss in float64 (numpy inputs become float64 arrays)."""
  with jax.enable_x64(True):
    to_jax = lambda tree: jax.tree.map(jnp.asarray, tree)
    total, new_state, terms = method.loss(to_jax(adapters or {}), to_jax(state or {}), to_jax(student),
                                          to_jax(teacher), to_jax(context))
    return float(total), new_state, {k: float(v) for k, v in terms.items()}


# ----------------------------------------------------------------------------- numpy references


def _log_softmax(z):
  z = z - z.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def ref_cross_entropy(logits, labels):
  return -_log_softmax(logits)[np.arange(len(labels)), labels]


def ref_kl(teacher, student, t):
  p = np.exp(_log_softmax(teacher / t))
  return np.sum(p * (_log_softmax(teacher / t) - _log_softmax(student / t)), -1)


def ref_triplet(embeddings, labels, margin):
  """Batch-hard triplet loss on L2-normalised embeddings, with loops."""
  x = embeddings / np.linalg.norm(embeddings, axis=-1, keepdims=True)
  n, values = len(x), []
  for a in range(n):
    pos = [np.linalg.norm(x[a] - x[j]) for j in range(n) if j != a and labels[j] == labels[a]]
    neg = [np.linalg.norm(x[a] - x[j]) for j in range(n) if labels[j] != labels[a]]
    if pos and neg:
      values.append(max(max(pos) - min(neg) + margin, 0.0))
  return np.mean(values) if values else 0.0


def ref_attention_transfer(s, t, p):
  def amap(f):
    a = (np.abs(f) ** p).mean(-1).reshape(len(f), -1)
    return a / np.linalg.norm(a, axis=-1, keepdims=True)
  return ((amap(s) - amap(t)) ** 2).mean(-1)


def _l2n(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- the shared terms


def test_loss_is_the_weighted_sum_of_ce_kd_and_triplet():
  """loss = ce_weight·CE + kd_weight·T²·KL(teacher ‖ student) + triplet_weight·triplet, batch means;
  the metrics are the unweighted terms."""
  method = _method(name="hinton_kd", ce_weight=0.3, kd_weight=0.7, temperature=4.0, triplet_weight=0.5,
                   triplet_margin=0.2)
  assert method.needs_teacher and method.term is None and method.student_taps == ()
  labels = np.array([0, 1, 2, 0, 1, 2, 3, 3])
  s, t = 2 * RNG.standard_normal((B, CLASSES)), 3 * RNG.standard_normal((B, CLASSES))
  total, state, terms = _loss(method, {"logits": s}, {"logits": t}, _context(labels))
  ce, kd = ref_cross_entropy(s, labels).mean(), 16 * ref_kl(t, s, 4.0).mean()
  triplet = ref_triplet(s, labels, 0.2)
  assert triplet > 0
  assert set(terms) == {"ce", "kd", "triplet"} and state == {}
  np.testing.assert_allclose([terms["ce"], terms["kd"], terms["triplet"]], [ce, kd, triplet], rtol=1e-10)
  np.testing.assert_allclose(total, 0.3 * ce + 0.7 * kd + 0.5 * triplet, rtol=1e-10)

  # Mixup: CE is mixed between each example's label and its partner's with the step's ratio.
  partner = np.roll(labels, 1)
  total, _, terms = _loss(method, {"logits": s}, {"logits": t}, _context(labels, mix=(0.3, partner)))
  mixed = 0.3 * ref_cross_entropy(s, labels).mean() + 0.7 * ref_cross_entropy(s, partner).mean()
  np.testing.assert_allclose(terms["ce"], mixed, rtol=1e-10)
  np.testing.assert_allclose(total, 0.3 * mixed + 0.7 * kd + 0.5 * triplet, rtol=1e-10)


def test_supervised_is_cross_entropy_only():
  method = _method(name="supervised")
  assert not method.needs_teacher
  labels = RNG.integers(0, CLASSES, B)
  s = RNG.standard_normal((B, CLASSES))
  total, _, terms = _loss(method, {"logits": s}, None, _context(labels))
  assert set(terms) == {"ce"}
  np.testing.assert_allclose(total, ref_cross_entropy(s, labels).mean(), rtol=1e-10)


# ----------------------------------------------------------------------------- FitNets


def test_fitnets_hint_through_the_1x1_conv_regressor():
  """Default taps stage2 → stage2: hint = mean((conv1×1(s) − t)²), the regressor's own params."""
  method = _method(name="fitnets", ce_weight=1.0, kd_weight=0.5, temperature=2.0, feature_weight=100.0)
  assert method.student_taps == method.teacher_taps == ("stage2",)
  adapters, state = method.init(jax.random.PRNGKey(0), STUDENT, TEACHER)
  assert state == {} and set(adapters) == {"regressor"}
  kernel, bias = (np.asarray(adapters["regressor"][k], np.float64) for k in ("kernel", "bias"))
  assert kernel.shape == (1, 1, 8, 16) and bias.shape == (16,)
  student, teacher = _features(STUDENT, ["stage2"]), _features(TEACHER, ["stage2"])
  labels = RNG.integers(0, CLASSES, B)
  total, _, terms = _loss(method, student, teacher, _context(labels, step=5), adapters)
  regressed = np.einsum("bhwc,cd->bhwd", student["stage2"], kernel[0, 0]) + bias
  hint = np.mean((regressed - teacher["stage2"]) ** 2)
  np.testing.assert_allclose(terms["fitnets"], hint, rtol=1e-10)
  ce = ref_cross_entropy(student["logits"], labels).mean()
  kd = 4 * ref_kl(teacher["logits"], student["logits"], 2.0).mean()
  np.testing.assert_allclose(total, ce + 0.5 * kd + 100 * hint, rtol=1e-10)


def test_fitnets_linear_regressor_for_vectors():
  method = _method(MLP, TEACHER, name="fitnets", feature_weight=1.0, ce_weight=0.0,
                   student_taps=("hidden1",), teacher_taps=("penultimate",))
  adapters, _ = method.init(jax.random.PRNGKey(1), MLP, TEACHER)
  kernel, bias = (np.asarray(adapters["regressor"][k], np.float64) for k in ("kernel", "bias"))
  assert kernel.shape == (16, 32)
  student, teacher = _features(MLP, ["hidden1"]), _features(TEACHER, ["penultimate"])
  total, _, _ = _loss(method, student, teacher, _context(np.zeros(B, int)), adapters)
  regressed = student["hidden1"] @ kernel + bias
  np.testing.assert_allclose(total, np.mean((regressed - teacher["penultimate"]) ** 2), rtol=1e-10)


def test_fitnets_without_adapter():
  same = _shapes(models.CNN((4, 8), CLASSES))
  method = _method(STUDENT, same, name="fitnets", feature_weight=1.0, ce_weight=0.0, adapter=False)
  adapters, state = method.init(jax.random.PRNGKey(0), STUDENT, same)
  assert adapters == {} and state == {}
  student, teacher = _features(STUDENT, ["stage2"]), _features(same, ["stage2"])
  total, _, _ = _loss(method, student, teacher, _context(np.zeros(B, int)))
  np.testing.assert_allclose(total, np.mean((student["stage2"] - teacher["stage2"]) ** 2), rtol=1e-10)
  with pytest.raises(UserError, match=r"adapter=True"):  # 8 vs 16 channels and no regressor
    _method(name="fitnets", feature_weight=1.0, adapter=False)
  with pytest.raises(UserError, match=r"same spatial size"):  # a 1×1 conv cannot resize
    _method(name="fitnets", feature_weight=1.0, student_taps=("stage1",), teacher_taps=("stage2",))


def test_fitnets_hint_stage_then_the_weighted_mix():
  """Before step hint_steps the loss is the hint alone (FitNets stage 1), from then on the mix."""
  method = _method(name="fitnets", ce_weight=1.0, kd_weight=0.5, temperature=2.0, feature_weight=3.0,
                   hint_steps=10)
  assert method.hint_steps == 10
  adapters, _ = method.init(jax.random.PRNGKey(0), STUDENT, TEACHER)
  student, teacher = _features(STUDENT, ["stage2"]), _features(TEACHER, ["stage2"])
  labels = RNG.integers(0, CLASSES, B)
  values = {s: _loss(method, student, teacher, _context(labels, step=s), adapters) for s in (0, 9, 10, 50)}
  _, _, terms = values[0]
  hint, ce, kd = terms["fitnets"], terms["ce"], terms["kd"]
  for step in (0, 9):
    np.testing.assert_allclose(values[step][0], hint, rtol=1e-12)
  for step in (10, 50):
    np.testing.assert_allclose(values[step][0], ce + 0.5 * kd + 3.0 * hint, rtol=1e-12)
  # hint_steps belongs to FitNets only.
  assert _method(name="at", feature_weight=1.0, hint_steps=10).hint_steps == 0


# ----------------------------------------------------------------------------- attention transfer


def test_attention_transfer_sums_over_the_common_stages():
  method = _method(name="at", feature_weight=1000.0, ce_weight=0.0, at_p=3.0)
  # The student has 2 stages, the teacher 3: the default pairs are the stages both have.
  assert method.student_taps == method.teacher_taps == ("stage1", "stage2")
  student, teacher = _features(STUDENT, ["stage1", "stage2"]), _features(TEACHER, ["stage1", "stage2"])
  total, _, terms = _loss(method, student, teacher, _context(np.zeros(B, int)))
  expected = sum(ref_attention_transfer(student[k], teacher[k], 3.0).mean() for k in ("stage1", "stage2"))
  np.testing.assert_allclose(terms["at"], expected, rtol=1e-10)
  np.testing.assert_allclose(total, 1000.0 * expected, rtol=1e-10)
  with jax.enable_x64(True):
    via_losses = sum(float(jnp.mean(losses.attention_transfer(student[k], teacher[k], 3.0)))
                     for k in ("stage1", "stage2"))
  np.testing.assert_allclose(terms["at"], via_losses, rtol=1e-12)


def test_attention_transfer_rejects_different_resolutions():
  with pytest.raises(UserError, match=r"'stage1'.*\(8, 8, 4\).*'stage2'.*\(4, 4, 16\)"):
    _method(name="at", feature_weight=1.0, student_taps=("stage1",), teacher_taps=("stage2",))
  with pytest.raises(UserError, match=r"pair up"):
    _method(name="at", feature_weight=1.0, student_taps=("stage1", "stage2"), teacher_taps=("stage1",))


def test_attention_transfer_without_common_stages_is_a_user_error():
  """An MLP student has no spatial maps: 'at' must refuse, not train with a constant-0 term."""
  with pytest.raises(UserError, match="share no stage taps"):
    _method(MLP, TEACHER, name="at", feature_weight=1000.0)


# ----------------------------------------------------------------------------- RKD, PKT, SP


@pytest.mark.parametrize("name", ["rkd", "pkt", "sp"])
def test_relational_terms_are_the_loss_functions_on_flattened_taps(name):
  method = _method(name=name, feature_weight=2.0, ce_weight=0.0, rkd_distance=3.0, rkd_angle=5.0)
  expected_taps = {"rkd": ("penultimate", "penultimate"), "pkt": ("penultimate", "penultimate"),
                   "sp": ("stage2", "stage3")}[name]  # SP: each model's last stage
  assert (method.student_taps[0], method.teacher_taps[0]) == expected_taps
  s_name, t_name = expected_taps
  student, teacher = _features(STUDENT, [s_name]), _features(TEACHER, [t_name])
  total, _, terms = _loss(method, student, teacher, _context(np.zeros(B, int)))
  s, t = student[s_name].reshape(B, -1), teacher[t_name].reshape(B, -1)
  with jax.enable_x64(True):
    s, t = jnp.asarray(s), jnp.asarray(t)
    expected = {"rkd": lambda: 3.0 * losses.rkd_distance(s, t) + 5.0 * losses.rkd_angle(s, t),
                "pkt": lambda: losses.pkt(s, t),
                "sp": lambda: losses.similarity_preserving(s, t)}[name]()
    expected = float(expected)
  assert expected > 1e-4
  np.testing.assert_allclose(terms[name], expected, rtol=1e-12)
  np.testing.assert_allclose(total, 2.0 * expected, rtol=1e-12)


def test_sp_of_a_feature_map_equals_sp_of_its_flattening():
  """SP on (B, H, W, C) maps is SP on the flattened vectors (a numpy Gram reference)."""
  method = _method(name="sp", feature_weight=1.0, ce_weight=0.0)
  student, teacher = _features(STUDENT, ["stage2"]), _features(TEACHER, ["stage3"])
  _, _, terms = _loss(method, student, teacher, _context(np.zeros(B, int)))
  def gram(f):
    f = f.reshape(len(f), -1)
    return _l2n(f @ f.T)
  expected = np.sum((gram(student["stage2"]) - gram(teacher["stage3"])) ** 2) / B**2
  np.testing.assert_allclose(terms["sp"], expected, rtol=1e-10)


# ----------------------------------------------------------------------------- DKD


def test_dkd_term_warms_up_linearly():
  method = _method(name="dkd", feature_weight=1.0, ce_weight=1.0, temperature=4.0, dkd_alpha=1.0,
                   dkd_beta=8.0, dkd_warmup_steps=20)
  assert method.student_taps == method.teacher_taps == ("logits",)
  labels = RNG.integers(0, CLASSES, B)
  s, t = RNG.standard_normal((B, CLASSES)), 3 * RNG.standard_normal((B, CLASSES))
  with jax.enable_x64(True):
    full = float(jnp.mean(losses.dkd(jnp.asarray(s), jnp.asarray(t), jnp.asarray(labels), 4.0, 1.0, 8.0)))
  assert full > 0
  ce = ref_cross_entropy(s, labels).mean()
  for step in (0, 5, 19, 20, 37):
    total, _, terms = _loss(method, {"logits": s}, {"logits": t}, _context(labels, step=step))
    np.testing.assert_allclose(terms["dkd"], min(step / 20, 1.0) * full, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(total, ce + min(step / 20, 1.0) * full, rtol=1e-12)
  no_warmup = _method(name="dkd", feature_weight=1.0, temperature=4.0)
  _, _, terms = _loss(no_warmup, {"logits": s}, {"logits": t}, _context(labels, step=0))
  np.testing.assert_allclose(terms["dkd"], full, rtol=1e-12)


# ----------------------------------------------------------------------------- CRD

N, K, DIM, TAU, MOMENTUM, BATCH = 64, 40, 16, 0.1, 0.5, 16
CRD_STUDENT = {"penultimate": (DIM,), "logits": (CLASSES,)}
CRD_TEACHER = {"penultimate": (20,), "logits": (CLASSES,)}


def _crd():
  config = dict(name="crd", ce_weight=0.0, feature_weight=1.0, crd_dim=DIM, crd_negatives=K,
                crd_temperature=TAU, crd_momentum=MOMENTUM)
  return _method(CRD_STUDENT, CRD_TEACHER, N, **config)


@functools.lru_cache(maxsize=None)
def _crd_step(method, num_devices):
  """Method.loss under jit(shard_map) over `num_devices` devices (CRD's collectives need the 'data'
  axis): f(adapters, state, student, teacher, index, step) -> (per-device losses, state, per-device
  terms), with step_rng = PRNGKey(step). Compiled once per device count."""
  mesh = Mesh(np.asarray(jax.devices()[:num_devices]), ("data",))

  def per_device(adapters, state, student, teacher, index, step, step_rng):
    context = {"labels": jnp.zeros(index.shape, jnp.int32), "mix": None, "index": index, "step": step,
               "rng": step_rng, "step_rng": step_rng}
    loss, new_state, terms = method.loss(adapters, state, student, teacher, context)
    return loss[None], new_state, jax.tree.map(lambda v: v[None], terms)

  mapped = jax.jit(jax.shard_map(
      per_device, mesh=mesh, in_specs=(P(), P(), P("data"), P("data"), P("data"), P(), P()),
      out_specs=(P("data"), P(), P("data")), check_vma=False))
  return lambda adapters, state, student, teacher, index, step: jax.device_get(
      mapped(adapters, state, student, teacher, jnp.asarray(index, jnp.int32), jnp.int32(step),
             jax.random.PRNGKey(step)))


def _negatives(index, step):
  """The documented draw: example i's negatives come from fold_in(step_rng, i) alone."""
  return np.stack([np.asarray(contrastive.sample_negatives(
      jax.random.fold_in(jax.random.PRNGKey(step), int(i)), jnp.asarray([i]), N, K)[0]) for i in index])


def _ref_crd(adapters, state, student, teacher, index, negatives):
  """(per-example loss, new banks, z_student, z_teacher) in float64 numpy."""
  f64 = lambda x: np.asarray(x, np.float64)
  embed = lambda name, x: _l2n(f64(x) @ f64(adapters[name]["kernel"]) + f64(adapters[name]["bias"]))
  v_s, v_t = embed("embed_student", student["penultimate"]), embed("embed_teacher", teacher["penultimate"])
  candidates = np.concatenate([index[:, None], negatives], axis=1)

  def side(anchor, bank, z_old):
    scores = np.exp(np.einsum("bd,bkd->bk", anchor, f64(bank)[candidates]) / TAU)
    z = float(z_old) if z_old > 0 else scores.mean() * N
    p, noise = scores / z, K / N
    per_example = -(np.log(p[:, 0] / (p[:, 0] + noise + 1e-7))
                    + np.sum(np.log(noise / (p[:, 1:] + noise + 1e-7)), axis=1))
    return per_example, z

  loss_s, z_s = side(v_s, state["memory_teacher"], state["z_student"])
  loss_t, z_t = side(v_t, state["memory_student"], state["z_teacher"])

  def update(bank, v):
    bank = f64(bank).copy()
    bank[index] = _l2n(MOMENTUM * bank[index] + (1 - MOMENTUM) * v)
    return bank

  banks = update(state["memory_student"], v_s), update(state["memory_teacher"], v_t)
  return loss_s + loss_t, *banks, z_s, z_t


def _crd_batch(rng):
  index = rng.permutation(N)[:BATCH].astype(np.int32)
  features = lambda shapes: {name: rng.standard_normal((BATCH,) + shape).astype(np.float32)
                             for name, shape in shapes.items()}
  return features(CRD_STUDENT), features(CRD_TEACHER), index


def test_crd_loss_banks_and_z_match_a_numpy_recomputation():
  method = _crd()
  adapters, state = jax.device_get(method.init(jax.random.PRNGKey(0), CRD_STUDENT, CRD_TEACHER))
  assert adapters["embed_student"]["kernel"].shape == (DIM, DIM)
  assert adapters["embed_teacher"]["kernel"].shape == (20, DIM)
  assert state["memory_student"].shape == state["memory_teacher"].shape == (N, DIM)
  assert float(state["z_student"]) == float(state["z_teacher"]) == 0.0
  run = _crd_step(method, 1)
  rng = np.random.default_rng(1)

  # First call: Z is estimated from this batch.
  student, teacher, index = _crd_batch(rng)
  negatives = _negatives(index, step=0)
  assert negatives.shape == (BATCH, K)
  assert not np.any(negatives == index[:, None]), "an example is its own negative"
  loss, new_state, terms = run(adapters, state, student, teacher, index, 0)
  ref_loss, ref_ms, ref_mt, z_s, z_t = _ref_crd(adapters, state, student, teacher, index, negatives)
  np.testing.assert_allclose(loss[0], ref_loss.mean(), rtol=1e-5)
  np.testing.assert_allclose(terms["crd"][0], ref_loss.mean(), rtol=1e-5)
  np.testing.assert_allclose([new_state["z_student"], new_state["z_teacher"]], [z_s, z_t], rtol=1e-5)
  for name, ref in (("memory_student", ref_ms), ("memory_teacher", ref_mt)):
    new, old = np.asarray(new_state[name]), np.asarray(state[name])
    np.testing.assert_allclose(new[index], ref[index], rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(new[index], axis=-1), 1.0, rtol=1e-6)
    others = np.setdiff1d(np.arange(N), index)
    np.testing.assert_array_equal(new[others], old[others], err_msg=f"{name}: rows outside the batch moved")
    assert not np.allclose(np.linalg.norm(old, axis=-1), 1.0)  # the initial bank is not normalised

  # Second call, another batch and step: Z is kept, the loss uses it and the updated banks.
  student2, teacher2, index2 = _crd_batch(rng)
  loss2, state2, _ = run(adapters, new_state, student2, teacher2, index2, 1)
  assert float(state2["z_student"]) == float(new_state["z_student"])
  assert float(state2["z_teacher"]) == float(new_state["z_teacher"])
  ref_loss2, *_ = _ref_crd(adapters, new_state, student2, teacher2, index2, _negatives(index2, step=1))
  np.testing.assert_allclose(loss2[0], ref_loss2.mean(), rtol=1e-5)


def test_crd_never_scores_an_example_against_itself_as_a_negative():
  """One-hot anchors and banks: an example's own bank row scores exp(1/τ), every other row exp(0).
  The loss then has a closed form that holds only if no negative is the example itself (uniform
  draws over all N = 64 would hit it with probability 1 − (63/64)^40 ≈ 47 % for each of the 16
  examples)."""
  method = _crd()
  eye = np.eye(DIM, dtype=np.float32)
  adapters = {"embed_student": {"kernel": eye, "bias": np.zeros(DIM, np.float32)},
              "embed_teacher": {"kernel": np.concatenate([eye, np.ones((4, DIM), np.float32)]),
                                "bias": np.zeros(DIM, np.float32)}}
  index = np.arange(BATCH, dtype=np.int32) * 4  # spread over the dataset
  bank = np.zeros((N, DIM), np.float32)
  bank[index] = eye  # example i's row is its anchor, orthogonal to the other examples' anchors
  state = {"memory_student": bank, "memory_teacher": bank, "z_student": np.float32(0),
           "z_teacher": np.float32(0)}
  student = {"penultimate": eye, "logits": np.zeros((BATCH, CLASSES), np.float32)}
  teacher = {"penultimate": np.concatenate([eye, np.zeros((BATCH, 4), np.float32)], axis=1),
             "logits": np.zeros((BATCH, CLASSES), np.float32)}
  loss, _, _ = _crd_step(method, 1)(adapters, state, student, teacher, index, 0)
  e, noise = np.exp(1 / TAU), K / N
  z = (e + K) / (K + 1) * N  # mean score × N: one exp(1/τ) and K ones per row
  side = -(np.log((e / z) / (e / z + noise + 1e-7)) + K * np.log(noise / (1 / z + noise + 1e-7)))
  np.testing.assert_allclose(loss[0], 2 * side, rtol=1e-5)


def test_crd_on_eight_devices_equals_one_device():
  """Same global batch: per-example negatives depend only on (step, index), Z is the global mean,
  and the banks are updated from all devices' embeddings."""
  method = _crd()
  adapters, state = jax.device_get(method.init(jax.random.PRNGKey(3), CRD_STUDENT, CRD_TEACHER))
  one, eight = _crd_step(method, 1), _crd_step(method, 8)
  rng = np.random.default_rng(5)
  state_one = state_eight = state
  for step in range(2):
    student, teacher, index = _crd_batch(rng)
    loss_one, state_one, _ = one(adapters, state_one, student, teacher, index, step)
    loss_eight, state_eight, _ = eight(adapters, state_eight, student, teacher, index, step)
    assert loss_eight.shape == (8,)
    np.testing.assert_allclose(loss_eight.mean(), loss_one[0], rtol=1e-5)
    for name in state:
      np.testing.assert_allclose(state_eight[name], state_one[name], rtol=1e-5, atol=1e-6, err_msg=name)


# ----------------------------------------------------------------------------- ensembles, mixup


def test_ensemble_logits_average_the_teachers_probabilities():
  logits = [RNG.standard_normal((B, CLASSES)) * s for s in (1.0, 3.0, 0.5)]
  softmax = lambda z: np.exp(_log_softmax(z))
  for temperature in (1.0, 4.0):
    with jax.enable_x64(True):
      out = np.asarray(methods.ensemble_logits([jnp.asarray(z) for z in logits], temperature))
    np.testing.assert_allclose(softmax(out / temperature),
                               np.mean([softmax(z / temperature) for z in logits], axis=0), rtol=1e-12)
  single = jnp.asarray(logits[0])
  assert methods.ensemble_logits([single], 4.0) is single


def test_teacher_forward_of_an_ensemble():
  """The first teacher gives the taps; 'logits' are the ensemble of all teachers' logits."""
  first, second = models.CNN((4, 8), CLASSES), models.MLP((16,), CLASSES)
  rng = np.random.default_rng(2)
  shapes = lambda model: jax.eval_shape(lambda: init_variables(model, SHAPE, jax.random.PRNGKey(0)))
  draw = lambda model: jax.tree.map(lambda s: jnp.asarray(0.3 * rng.standard_normal(s.shape), s.dtype),
                                    shapes(model))
  variables = (draw(first), draw(second))
  images = jnp.asarray(rng.uniform(0, 1, (4,) + SHAPE), jnp.float32)
  features = step_lib.teacher_forward((first, second), variables, images, ("stage2",), 3.0)
  assert set(features) == {"stage2", "logits"}
  alone, _ = taps.forward(first, variables[0], images, ("stage2",))
  np.testing.assert_array_equal(features["stage2"], alone["stage2"])
  expected = methods.ensemble_logits(
      [first.apply(variables[0], images), second.apply(variables[1], images)], 3.0)
  np.testing.assert_allclose(features["logits"], expected, rtol=1e-6, atol=1e-6)
  single = step_lib.teacher_forward((first,), variables[:1], images, (), 3.0)
  np.testing.assert_array_equal(single["logits"], alone["logits"])


def test_mixup_pairs_each_example_with_the_previous_one():
  images = jnp.asarray([1.0, 2.0, 4.0]).reshape(3, 1, 1, 1)
  mixed = step_lib.mixup(images, jnp.float32(0.25))
  # 0.25·x_i + 0.75·x_{i−1}, x_{−1} = x_2
  np.testing.assert_allclose(np.asarray(mixed).ravel(), [0.25 + 3.0, 0.5 + 0.75, 1.0 + 1.5])
  np.testing.assert_array_equal(step_lib.mixup(images, jnp.float32(1.0)), images)


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("method,match", [
    (dict(name="hinton_kd", kd_weight=-1.0), r"kd_weight must be ≥ 0"),
    (dict(name="hinton_kd", ce_weight=-0.5), r"ce_weight must be ≥ 0"),
    (dict(name="at", feature_weight=0.0), r"feature_weight=0"),
    (dict(name="crd", feature_weight=0.0), r"feature_weight=0"),
    (dict(name="hinton_kd", temperature=0.0), r"temperature must be > 0"),
    (dict(name="crd", feature_weight=1.0, crd_momentum=1.0), r"crd_momentum"),
    (dict(name="supervised", kd_weight=1.0), r"no teacher"),
    (dict(name="fitnets", feature_weight=1.0, student_taps=("stage1", "stage2"),
          teacher_taps=("stage1", "stage2")), r"one tap pair"),
], ids=["kd_weight", "ce_weight", "at_off", "crd_off", "temperature", "momentum", "supervised_kd",
        "two_pairs"])
def test_bad_method_values_are_user_errors(method, match):
  with pytest.raises(UserError, match=match):
    _method(**method)


def test_crd_needs_fewer_negatives_than_examples():
  with pytest.raises(UserError, match=r"crd_negatives=64 must be below the 64 training examples"):
    _method(CRD_STUDENT, CRD_TEACHER, 64, name="crd", feature_weight=1.0, crd_negatives=64)
  method = _method(CRD_STUDENT, CRD_TEACHER, 65, name="crd", feature_weight=1.0, crd_negatives=64)
  assert method.term.num_data == 65
