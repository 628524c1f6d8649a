"""A model's weights read from the files people save them in, checked leaf by leaf.

`load_into(model, path)` fills an NNX model with the weights of a file holding the tree of its
variables (``nnx.state(model)``: parameters and, where the model has them, batch statistics):

* an Orbax checkpoint directory, as the Flax NNX checkpointing guide saves one
  (``ocp.StandardCheckpointer().save(path, nnx.state(model))``, or its `nnx.to_pure_dict` form);
* a Flax msgpack file (``flax.serialization.to_bytes(nnx.to_pure_dict(nnx.state(model)))``);
* a `.npz` or `.safetensors` file of the flattened tree, keys joined by '.' or '/'
  ('conv1.kernel', 'layers.0.bias').

Every leaf is checked: a missing or unexpected one, or one of another shape, is named, all of them
in one line. `file_digest` identifies the file in results.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

import numpy as np
from flax import nnx

from jaxunlearn import files
from jaxunlearn.config import ConfigError

SUFFIXES = ('.msgpack', '.npz', '.safetensors')
_READ_BYTES = 1 << 20


def file_digest(path: str) -> str:
  """The sha256 of a file, or of a directory's files (their relative paths and bytes, sorted)."""
  digest = hashlib.sha256()
  if os.path.isdir(path):
    names = sorted(
      os.path.relpath(os.path.join(root, name), path)
      for root, _, names in os.walk(path)
      for name in names
    )
  else:
    names = ['']
  for name in names:
    digest.update(name.encode())
    with open(os.path.join(path, name) if name else path, 'rb') as f:
      while chunk := f.read(_READ_BYTES):
        digest.update(chunk)
  return digest.hexdigest()


def _flatten(tree: Mapping, prefix: str = '') -> dict[str, np.ndarray]:
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(_flatten(value, name + '.'))
    else:
      flat[name] = np.asarray(value)
  return flat


def _normalised(flat: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Keys joined by '.', without the '.value' leaf that an `nnx.State` saved whole adds."""
  out = {}
  for key, value in flat.items():
    key = key.replace('/', '.')
    out[key.removesuffix('.value')] = value
  return out


def read_weights(path: str, flag: str = '--config.original') -> dict[str, np.ndarray]:
  """The flattened tree of arrays in `path` (see the module docstring for the formats).

  Raises:
    ConfigError: a missing path, an unknown format or a file that does not read.
  """
  if not os.path.exists(path):
    raise ConfigError(f'{flag}={path!r}: no such file or directory.')
  suffix = os.path.splitext(path)[1].lower()
  if not os.path.isdir(path) and suffix not in SUFFIXES:
    raise ConfigError(
      f'{flag}={path!r}: unknown format {suffix or "(no suffix)"!r}; allowed: an Orbax '
      f'checkpoint directory, {", ".join(SUFFIXES)}.'
    )
  try:
    if os.path.isdir(path):
      import orbax.checkpoint as ocp  # noqa: PLC0415 (only directories need Orbax)

      with ocp.StandardCheckpointer() as checkpointer:
        flat = _flatten(checkpointer.restore(os.path.abspath(path)))
    elif suffix == '.msgpack':
      from flax import serialization  # noqa: PLC0415

      with open(path, 'rb') as f:
        flat = _flatten(serialization.msgpack_restore(f.read()))
    elif suffix == '.npz':
      with np.load(path) as arrays:
        flat = {key: arrays[key] for key in arrays.files}
    else:
      import safetensors.numpy  # noqa: PLC0415

      flat = safetensors.numpy.load_file(path)
  except ConfigError:
    raise
  except Exception as error:  # noqa: BLE001 (every reader fails in its own way)
    what = 'an Orbax checkpoint directory' if os.path.isdir(path) else f'a {suffix} file'
    message = ' '.join(str(error).split())[:200]
    raise ConfigError(
      f'{flag}={path!r}: does not read as {what} ({type(error).__name__}: {message}).'
    ) from None
  return _normalised(flat)


def load_into(model: nnx.Module, path: str, flag: str = '--config.original') -> nnx.Module:
  """Fills `model`'s parameters and batch statistics with the weights in `path`, in place.

  Args:
    model: the model the file was saved from (its architecture; its values are replaced).
    path: the weights file or directory.
    flag: the flag `path` came from, for error messages.

  Returns:
    `model`.

  Raises:
    ConfigError: naming every leaf that is missing, unexpected or of another shape, with the
      expected and found shapes.
  """
  found = read_weights(path, flag)
  state = nnx.state(model)
  expected = {'.'.join(map(str, p)): v for p, v in nnx.to_flat_state(state)}
  problems = [
    f'{k} missing (expected {tuple(v.shape)})' for k, v in expected.items() if k not in found
  ]
  problems += [f'{k} unexpected {tuple(found[k].shape)}' for k in found if k not in expected]
  problems += [
    f'{k} has shape {tuple(found[k].shape)}, expected {tuple(v.shape)}'
    for k, v in expected.items()
    if k in found and tuple(found[k].shape) != tuple(v.shape)
  ]
  if problems:
    raise ConfigError(
      f"{flag}={path!r}: does not fit the model's tree ({len(problems)} leaves): "
      + '; '.join(problems)
      + '.'
    )
  for key, variable in expected.items():
    variable.set_value(np.asarray(found[key], dtype=variable.dtype))
  nnx.update(model, state)
  return model


def public_layout_weights(
  path: str, layout: str, input_shape, model_kwargs: dict, flag: str = '--config.init'
) -> dict[str, np.ndarray]:
  """The flattened tree of a public backbone's weights (`jaxunlearn.models.load_pretrained`),
  in the zoo model's own paths.

  Raises:
    ConfigError: an unknown layout, or a file that does not load as it.
  """
  from jaxunlearn.models import pretrained  # noqa: PLC0415 (only public layouts need it)

  if layout not in pretrained.PRETRAINED:
    raise ConfigError(
      f"{flag}_layout={layout!r}: allowed: the model's own tree (''), "
      f'{", ".join(sorted(pretrained.PRETRAINED))}.'
    )
  try:
    model = pretrained.load_pretrained(
      path, layout, input_shape=tuple(input_shape), **dict(model_kwargs)
    )
  except (ValueError, OSError, ImportError) as error:
    raise ConfigError(f'{flag}={path!r}: {" ".join(str(error).split())}') from None
  return {'.'.join(map(str, p)): np.asarray(v[...]) for p, v in nnx.to_flat_state(nnx.state(model))}


def load_body_into(
  model: nnx.Module,
  found: Mapping[str, np.ndarray],
  head: str,
  *,
  where: str,
  flag: str = '--config.init',
) -> nnx.Module:
  """Fills every weight of `model` but its head's with `found` (a flattened tree), in place; the
  head keeps its own (fresh) values, whatever the file holds for it.

  Args:
    model: the model, freshly initialised.
    found: the pre-trained weights by dotted path (`read_weights`, `public_layout_weights`).
    head: the dotted path of the model's classifier head.
    where: the file, for error messages.
    flag: the flag the file came from.

  Returns:
    `model`.

  Raises:
    ConfigError: naming every body leaf that is missing or of another shape, and every leaf of
      the file the model does not have.
  """
  state = nnx.state(model)
  expected = {'.'.join(map(str, p)): v for p, v in nnx.to_flat_state(state)}

  def in_head(key: str) -> bool:
    return key == head or key.startswith(head + '.')

  body = {k: v for k, v in expected.items() if not in_head(k)}
  problems = [f'{k} missing (expected {tuple(v.shape)})' for k, v in body.items() if k not in found]
  problems += [f'{k} unexpected {tuple(found[k].shape)}' for k in found if k not in expected]
  problems += [
    f'{k} has shape {tuple(found[k].shape)}, expected {tuple(v.shape)}'
    for k, v in body.items()
    if k in found and tuple(found[k].shape) != tuple(v.shape)
  ]
  if problems:
    raise ConfigError(
      f"{flag}={where!r}: does not fit the model's body ({len(problems)} leaves): "
      + '; '.join(problems)
      + '.'
    )
  for key, variable in body.items():
    variable.set_value(np.asarray(found[key], dtype=variable.dtype))
  nnx.update(model, state)
  return model


def save_weights(model: nnx.Module, path: str) -> None:
  """Writes ``nnx.state(model)`` (parameters and batch statistics) to `path` as a `.safetensors`
  file of the flattened tree, atomically: what `load_into` and ``--config.init`` read."""
  import safetensors.numpy  # noqa: PLC0415

  flat = {
    '.'.join(map(str, p)): np.ascontiguousarray(np.asarray(v[...]))
    for p, v in nnx.to_flat_state(nnx.state(model))
  }
  with files.atomic_file(path, 'wb') as f:
    f.write(safetensors.numpy.save(flat))
