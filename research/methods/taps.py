"""Feature taps: named intermediate features of any linen model, read inside the jitted step.

A tap is either
  - a name the model records with `self.sow("taps", name, x)` (our models: "stem", "stage1", …,
    "penultimate"; see research/models), or
  - the output of any submodule, named by its path, e.g. "ResidualBlock_3" or
    "ResidualBlock_3/Conv_1" (flax's capture_intermediates: no model change needed),
plus "logits", the model's output. Only the requested taps are recorded, so a step that asks for
none runs exactly the logits-only computation.
"""
import jax
import jax.numpy as jnp

from research.errors import UserError

LOGITS = "logits"
_COLLECTIONS = ("taps", "intermediates")


def forward(model, variables, images, taps=(), mutable=(), **apply_kwargs):
  """Applies `model`; returns (features: {tap: array, "logits": logits}, updated mutable collections)."""
  wanted = set(taps) - {LOGITS}
  collections = list(mutable) + (list(_COLLECTIONS) if wanted else [])
  capture = False
  if wanted:  # names the model does not sow are submodule paths
    capture = lambda mdl, method: method == "__call__" and "/".join(mdl.path) in wanted
  out = model.apply(variables, images, mutable=collections or False,
                    capture_intermediates=capture, **apply_kwargs)
  logits, cols = out if collections else (out, {})
  features = {LOGITS: logits}
  for name in wanted:
    if name in cols.get("taps", {}):
      features[name] = cols["taps"][name][-1]
    else:
      node = cols["intermediates"]
      for part in name.split("/"):
        node = node[part]
      features[name] = node["__call__"][-1]
  return features, {k: v for k, v in cols.items() if k not in _COLLECTIONS}


def available(model, variables, example_shape, dtype=jnp.float32) -> dict:
  """{tap name: feature shape without the batch axis} for every tap `model` offers (no compute).
  `dtype` is the input's: float images, or integer tokens for language models."""
  def run(v):
    out, cols = model.apply(v, jnp.zeros((2,) + tuple(example_shape), dtype), train=False,
                            mutable=list(_COLLECTIONS), capture_intermediates=True)
    return out, cols
  logits, cols = jax.eval_shape(run, variables)
  shapes = {name: value[-1].shape[1:] for name, value in cols.get("taps", {}).items()}
  flat = jax.tree_util.tree_flatten_with_path(
      cols.get("intermediates", {}), is_leaf=lambda x: isinstance(x, tuple))[0]
  for path, value in flat:
    names = [p.key for p in path]
    if len(names) > 1 and names[-1] == "__call__" and hasattr(value[-1], "shape"):
      shapes["/".join(names[:-1])] = value[-1].shape[1:]
  shapes[LOGITS] = logits.shape[1:]
  return shapes


def check(requested, shapes: dict, who: str) -> None:
  """Raises UserError naming a tap that `who` (student/teacher) does not have, with the choices."""
  for tap in requested:
    if tap not in shapes:
      named = [t for t in shapes if "/" not in t and not t[:1].isupper()]  # sown names are lower case
      modules = [t for t in shapes if t not in named]
      raise UserError(
          f"The {who} has no feature tap {tap!r}. Available taps: {', '.join(named)}; or a submodule "
          f"output by path, e.g. {', '.join(modules[:6])}{' …' if len(modules) > 6 else ''} "
          f"({len(modules)} in all). Fix config.method.{who}_taps.")


def stage_taps(shapes: dict) -> list:
  """The model's "stage1", "stage2", … taps in order."""
  stages = [t for t in shapes if t.startswith("stage") and t[5:].isdigit()]
  return sorted(stages, key=lambda t: int(t[5:]))
