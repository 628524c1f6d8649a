"""The functional boundary between NNX modules and jitted steps, and the training state PyTree.

A model is split once into a graph definition and two pure dicts of arrays, ``params`` (every
`nnx.Param`, LoRA weights included) and ``batch_stats``. Jitted steps take and return those dicts;
`ModelFns.apply` merges them back into a module inside the trace, which costs nothing at run time.
The model's feature points (`jaxunlearn.features`) travel with its functions, so any model
called as ``model(x, train=...) -> logits`` gives features.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn import features as features_lib
from jaxunlearn.config import ConfigError

PyTree = Any


@dataclasses.dataclass(frozen=True, eq=False)
class ModelFns:
  """Pure functions of a model: `apply(variables, x, train=..., return_features=...)`.

  `param_types` mirrors ``params`` with each leaf's variable type (e.g. `nnx.Param`,
  `nnx.LoRAParam`) so that optimisers can partition parameters by type. `feature_points` are the
  features `apply` returns with ``return_features`` (`jaxunlearn.features`).
  """

  graphdef: Any
  abstract_params: nnx.State
  abstract_batch_stats: nnx.State
  param_types: PyTree
  feature_points: tuple = ()

  def apply(
    self,
    variables: dict,
    x: jax.Array,
    *,
    train: bool,
    return_features: bool = False,
    replace_features: dict | None = None,
  ):
    """Returns ``(outputs, new_batch_stats)``; outputs are logits or (logits, features).

    `replace_features` maps feature names to values the rest of the network runs on instead
    (`jaxunlearn.features.run`)."""
    model = self.module(variables)
    if return_features or replace_features:
      logits, features, _ = self._run(model, x, train, replace_features)
      outputs = (logits, features) if return_features else logits
    else:
      outputs = model(x, train=train)
    outputs = jax.tree.map(_as_float32, outputs)
    return outputs, nnx.state(model, nnx.BatchStat).to_pure_dict()

  def capture(self, variables: dict, x: jax.Array, *, train: bool):
    """``(logits, features, intermediates)``: the features and the `nnx.Intermediate` State of
    what the model's own modules sowed (e.g. LoRA branch outputs), in one call."""
    logits, features, intermediates = self._run(self.module(variables), x, train, None)
    return _as_float32(logits), jax.tree.map(_as_float32, features), intermediates

  def _run(self, model, x, train, replace):
    if not self.feature_points:
      raise ValueError('this model has no feature points (functionalize it with some).')
    return features_lib.run(model, self.feature_points, x, train=train, replace=replace)

  def module(self, variables: dict) -> nnx.Module:
    """A stateful module holding `variables` (inside a trace: free; outside: for export or
    inspection)."""
    return nnx.merge(
      self.graphdef,
      _fill(self.abstract_params, variables['params']),
      _fill(self.abstract_batch_stats, variables['batch_stats']),
    )


def _fill(abstract: nnx.State, values: dict) -> nnx.State:
  state = jax.tree.map(lambda x: x, abstract)
  nnx.replace_by_pure_dict(state, values)
  return state


def functionalize(model: nnx.Module, feature_points: tuple = ()) -> tuple[ModelFns, dict]:
  """Splits `model` into `ModelFns` and its variables ``{'params': ..., 'batch_stats': ...}``.

  Args:
    model: a model holding only `nnx.Param` and `nnx.BatchStat` variables.
    feature_points: its feature points (`jaxunlearn.features.feature_points`); () takes those
      the model names (``feature_layers()``), if any.

  Returns:
    ``(model_fns, variables)``.
  """
  graphdef, params, batch_stats, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
  others = sorted({type(v).__name__ for _, v in nnx.to_flat_state(rest)})
  if others:
    raise ConfigError(
      f'--config.model: the model holds {", ".join(others)} variables; a model may hold only '
      'nnx.Param and nnx.BatchStat (no RNG state: no dropout with stored rngs).'
    )
  param_types = jax.tree.map(
    lambda v: type(v), params, is_leaf=lambda v: isinstance(v, nnx.Variable)
  )
  fns = ModelFns(
    graphdef=graphdef,
    abstract_params=jax.tree.map(_abstract, params),
    abstract_batch_stats=jax.tree.map(_abstract, batch_stats),
    param_types=param_types.to_pure_dict(),
    feature_points=tuple(feature_points)
    or (features_lib.declared_points(model) if hasattr(model, 'feature_layers') else ()),
  )
  return fns, {'params': params.to_pure_dict(), 'batch_stats': batch_stats.to_pure_dict()}


def _as_float32(x: jax.Array) -> jax.Array:
  # A model computing in bfloat16 (`models.set_compute_dtype`) still gives float32 outputs, so
  # losses and scores are float32; a float32 output is returned unchanged.
  return x.astype(jnp.float32)


def _abstract(x):
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


@flax.struct.dataclass
class TrainState:
  """Everything a step changes, as one PyTree (checkpointed whole).

  ``opt_state`` maps an optimiser name to its optax state, so a method may keep several (the
  fast forget and remain optimisers of SFR-on, say). What stays fixed during a run (a frozen
  teacher, a mask, fixed random labels) is not state: it is the run's ``constants``, passed to
  every step beside the state and never checkpointed (`jaxunlearn.loop`).
  """

  step: jax.Array
  params: PyTree
  batch_stats: PyTree
  opt_state: dict

  @property
  def variables(self) -> dict:
    return {'params': self.params, 'batch_stats': self.batch_stats}
