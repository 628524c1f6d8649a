"""Intermediate features of any NNX model, captured without the model's help.

A feature is the input or the output of one submodule, named by its path in the model
(`FeaturePoint`). `run` wraps each chosen submodule in a `_Tap` for the duration of one call
(`nnx.recursive_map`), calls the model under `nnx.capture`, where every tap sows what it sees as an
`nnx.Intermediate`, and unwraps the model again; the model's own code is untouched and its
variables keep their paths. A tap can also substitute a given value for what it sees
(``replace={'conv2': mu}``), which runs the rest of the network on `mu` (broadcast over the
batch): RFA-LoRA asks this way which class a mean feature predicts.

Which points a model has (`feature_points`):

* a model may name its own, with a method ``feature_layers(self) -> {name: 'path' | 'path:input'}``
  (every model of the zoo does, shallow to deep, ending with 'penultimate', the head's input);
* `--config.features` names them: dotted paths ('blocks.3', 'fc1:input', 'name=path'), or
  'type:CLASS' (the output of every submodule of that class, in the order they are called);
* otherwise the default rule: the output of every nnx.Conv, nnx.Linear and nnx.Einsum in the
  order they are called, except the last one called (the head), then the head's input as
  'penultimate'.

Every form ends with 'penultimate' (CKA and the representation scores use it): where the spec does
not name it, it is the input of the head, the last Conv/Linear/Einsum called, which must give the
logits.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxunlearn.config import ConfigError

PENULTIMATE = 'penultimate'
INPUT, OUTPUT = 'input', 'output'
LAYER_TYPES = (nnx.Conv, nnx.Linear, nnx.Einsum)
_SOW_PREFIX = 'feature:'

PathParts = tuple[str | int, ...]


@dataclasses.dataclass(frozen=True)
class FeaturePoint:
  """A named feature: the input or the output of the submodule at `path`."""

  name: str
  path: PathParts
  where: str = OUTPUT

  @property
  def dotted(self) -> str:
    return dotted(self.path)


def dotted(path: PathParts) -> str:
  """'layer1.0.conv1' for ('layer1', 0, 'conv1')."""
  return '.'.join(str(part) for part in path)


def _keep_latest(_, value):
  return value


class _Tap(nnx.Module):
  """A submodule plus what it records: its input and/or output under the points' names, or a
  given replacement for them."""

  def __init__(self, inner: nnx.Module, points: Sequence[FeaturePoint], replace: Mapping):
    self.inner = inner
    self.points = tuple(points)
    self.replace = nnx.data({p.name: replace[p.name] for p in points if p.name in replace})

  def _seen(self, value: jax.Array, where: str) -> jax.Array:
    for point in self.points:
      if point.where != where:
        continue
      if point.name in self.replace:
        value = jnp.broadcast_to(jnp.asarray(self.replace[point.name], value.dtype), value.shape)
      self.sow(nnx.Intermediate, _SOW_PREFIX + point.name, value, reduce_fn=_keep_latest)
    return value

  def __call__(self, x, *args, **kwargs):
    return self._seen(self.inner(self._seen(x, INPUT), *args, **kwargs), OUTPUT)


class _Probe(nnx.Module):
  """A submodule that appends its path to `calls` each time it is called (at trace time)."""

  def __init__(self, inner: nnx.Module, path: PathParts, calls: list):
    self.inner = inner
    self.path = path
    self.calls = calls

  def __call__(self, *args, **kwargs):
    out = self.inner(*args, **kwargs)
    self.calls.append((self.path, jax.ShapeDtypeStruct(out.shape, out.dtype)))
    return out


def _wrapped(model: nnx.Module, wrap) -> nnx.Module:
  """`model` with `wrap(path, module)` applied to every submodule (in place; the root is kept)."""
  return nnx.recursive_map(lambda path, node: wrap(path, node) if path else node, model)


def _unwrapped(model: nnx.Module, kind: type) -> nnx.Module:
  return nnx.recursive_map(lambda _, node: node.inner if isinstance(node, kind) else node, model)


def run(
  model: nnx.Module,
  points: Sequence[FeaturePoint],
  x: jax.Array,
  *,
  train: bool,
  replace: Mapping[str, jax.Array] | None = None,
):
  """Calls ``model(x, train=train)`` and captures the features at `points`.

  The model is wrapped for the call and unwrapped after it (also on an error), so its structure
  and variables' paths are as before; batch statistics it updates stay updated.

  Args:
    model: any NNX model called as ``model(x, train=...)``.
    points: the features to capture.
    x: the input batch.
    train: passed to the model.
    replace: feature name -> a value (broadcast to the feature's shape) that the rest of the
      network runs on instead of the computed one.

  Returns:
    ``(logits, features, intermediates)``: features an OrderedDict in the order of `points`
    (JAX keeps an OrderedDict's order through transformations), and the `nnx.Intermediate` State
    of everything the model's own modules sowed during the call (e.g. LoRA branch outputs).
  """
  replace = dict(replace or {})
  unknown = sorted(set(replace) - {p.name for p in points})
  if unknown:
    raise ValueError(f'replace names no feature point: {unknown}.')
  by_path = collections.defaultdict(list)
  for point in points:
    by_path[point.path].append(point)
  model = _wrapped(
    model, lambda path, node: _Tap(node, by_path[path], replace) if path in by_path else node
  )
  try:
    logits, intermediates = nnx.capture(model, nnx.Intermediate)(x, train=train)
  finally:
    model = _unwrapped(model, _Tap)
  captured, own = {}, {}
  for path, variable in nnx.to_flat_state(intermediates):
    name = path[-1]
    if isinstance(name, str) and name.startswith(_SOW_PREFIX):
      captured[name[len(_SOW_PREFIX) :]] = variable[...]
    else:
      own[_untapped(path, by_path)] = variable
  missing = [p.name for p in points if p.name not in captured]
  if missing:
    raise ValueError(f'the model never called the submodules of features {missing}.')
  features = collections.OrderedDict((p.name, captured[p.name]) for p in points)
  return logits, features, nnx.from_flat_state(own)


def _untapped(path: PathParts, tapped) -> PathParts:
  """`path` in the unwrapped model: without the 'inner' step of every tap on the way."""
  out = []
  for part in path:
    if part == 'inner' and tuple(out) in tapped:
      continue
    out.append(part)
  return tuple(out)


def layer_calls(model: nnx.Module, input_shape: Sequence[int], types=LAYER_TYPES) -> list:
  """The (path, output shape) of every submodule of `types` in the order one call of the model on
  a batch of 2 calls them (traced abstractly: nothing is computed), and the logits' shape.

  Returns:
    ``(calls, logits)``: calls a list of (path, ShapeDtypeStruct), logits a ShapeDtypeStruct.
  """
  graphdef, state = nnx.split(model)
  calls = []

  def forward(state):
    module = nnx.merge(graphdef, state)
    module = _wrapped(
      module,
      lambda path, node: _Probe(node, path, calls) if isinstance(node, types) else node,
    )
    return module(jnp.zeros((2, *input_shape), jnp.float32), train=False)

  logits = jax.eval_shape(forward, state)
  return calls, logits


def _module_paths(model: nnx.Module) -> dict[str, PathParts]:
  return {dotted(path): path for path, _ in nnx.iter_modules(model) if path}


def _head_input(model: nnx.Module, input_shape, flag: str) -> FeaturePoint:
  calls, logits = layer_calls(model, input_shape)
  if not calls or calls[-1][1].shape != logits.shape:
    raise ConfigError(
      f"{flag}: cannot find the model's head (the last Conv/Linear/Einsum it calls does not "
      "give the logits); name the head's input, e.g. 'penultimate=PATH:input'."
    )
  return FeaturePoint(PENULTIMATE, calls[-1][0], INPUT)


def _parse_entry(entry: str, paths: dict[str, PathParts], flag: str) -> FeaturePoint:
  name, _, target = entry.rpartition('=')
  where = OUTPUT
  if target.endswith(':' + INPUT):
    target, where = target[: -len(INPUT) - 1], INPUT
  elif target.endswith(':' + OUTPUT):
    target = target[: -len(OUTPUT) - 1]
  if target not in paths:
    shown = ', '.join(list(paths)[:12]) + (', ...' if len(paths) > 12 else '')
    raise ConfigError(
      f'{flag}: {target!r} matches no submodule of the model; its submodules: {shown}.'
    )
  return FeaturePoint(name or target, paths[target], where)


def declared_points(model: nnx.Module) -> tuple[FeaturePoint, ...]:
  """The points a model names with ``feature_layers()`` ({name: 'path' | 'path:input'})."""
  paths = _module_paths(model)
  flag = f'{type(model).__name__}.feature_layers'
  return tuple(
    _parse_entry(f'{name}={target}', paths, flag) for name, target in model.feature_layers().items()
  )


def feature_points(
  model: nnx.Module, input_shape: Sequence[int], spec: str = '', *, flag: str = '--config.features'
) -> tuple[FeaturePoint, ...]:
  """The feature points of `model` (see the module docstring for the rules).

  Args:
    model: the model, without LoRA branches or with them (paths are those of the wrapped layers).
    input_shape: one example's (H, W, C).
    spec: '' (the model's `feature_layers()`, else the default rule), 'type:CLASS', or
      comma-separated entries 'path', 'path:input', 'name=path[:input]'.
    flag: the flag `spec` came from, for error messages.

  Returns:
    The points, shallow to deep, the last named 'penultimate'.

  Raises:
    ConfigError: a path that matches no submodule, a class no submodule has, a model without a
      head the default rule can find.
  """
  paths = _module_paths(model)
  spec = spec.strip()
  if not spec and hasattr(model, 'feature_layers'):
    points = list(declared_points(model))
  elif not spec:
    calls, _ = layer_calls(model, input_shape)
    points = list({dotted(p): FeaturePoint(dotted(p), p) for p, _ in calls[:-1]}.values())
  elif spec.startswith('type:'):
    class_name = spec[len('type:') :]
    kinds = {type(m) for _, m in nnx.iter_modules(model) if type(m).__name__ == class_name}
    if not kinds:
      names = sorted({type(m).__name__ for _, m in nnx.iter_modules(model)})
      raise ConfigError(
        f'{flag}={spec!r}: the model has no submodule of class {class_name!r}; its classes: '
        f'{", ".join(names)}.'
      )
    calls, _ = layer_calls(model, input_shape, tuple(kinds))
    points = list({dotted(p): FeaturePoint(dotted(p), p) for p, _ in calls}.values())
  else:
    points = [_parse_entry(e.strip(), paths, f'{flag}={spec!r}') for e in spec.split(',')]
  if PENULTIMATE not in {p.name for p in points}:
    points.append(_head_input(model, input_shape, flag))
  names = [p.name for p in points]
  if len(set(names)) != len(names):
    raise ConfigError(f'{flag}={spec!r}: a feature name is given twice ({", ".join(names)}).')
  return tuple(points)


def features_of(
  model: nnx.Module,
  x: jax.Array,
  *,
  train: bool = False,
  spec: str = '',
  replace: Mapping[str, jax.Array] | None = None,
):
  """``(logits, features, intermediates)`` of one call of `model` on `x`, at the points `spec`
  gives (`feature_points`): for inspecting a module directly (functional code uses
  `state.ModelFns.apply`)."""
  return run(model, feature_points(model, x.shape[1:], spec), x, train=train, replace=replace)
