"""Orbax checkpoints of a `TrainState`: periodic, keep the last k and the best by a metric, resume.

Orbax writes each step to a temporary directory and renames it when complete, so a run killed at
any moment leaves only whole checkpoints. A JSON metadata item (config, split digest, model
signature) is saved beside the state; `check_compatible` refuses a directory written for another
architecture or forget split before any work starts.

In a multi-host run every process must call the manager's methods in the same order: each may
hold a barrier, and orbax's default barrier is a collective (`sync_global_devices`), so a barrier
that only some processes take pairs with another collective on the others and hangs them all.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint import checkpoint_managers

from jaxunlearn.state import TrainState


def model_signature(params) -> dict:
  """Parameter paths and shapes: what must match for a checkpoint to fit a model."""
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return {jax.tree_util.keystr(path): list(leaf.shape) for path, leaf in flat}


class CheckpointManager:
  """Thin wrapper over `ocp.CheckpointManager` implementing the loop's `Checkpointer`: it keeps
  the last `keep` checkpoints and, with `best_metric`, the one where that metric is highest."""

  def __init__(
    self,
    directory: str,
    *,
    every_steps: int,
    keep: int = 2,
    best_metric: str | None = None,
    meta: dict | None = None,
  ):
    policies = [checkpoint_managers.LatestN(n=keep)]
    if best_metric:
      policies.append(
        checkpoint_managers.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric],
          n=1,
          keep_checkpoints_without_metrics=False,
        )
      )
    self.directory = os.path.abspath(directory)
    self.every_steps = every_steps
    self.meta = meta or {}
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies),
        best_fn=(lambda m: m[best_metric]) if best_metric else None,
        create=True,
      ),
    )

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step % self.every_steps == 0

  def save(self, state: TrainState, metrics: dict) -> None:
    step = int(jax.device_get(state.step))
    self._manager.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        meta=ocp.args.JsonSave({**self.meta, 'step': step, 'metrics': metrics}),
      ),
      metrics=metrics or None,
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def best_step(self) -> int | None:
    return self._manager.best_step()

  def restore(self, step: int, target: TrainState) -> TrainState:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    restored = self._manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )
    return restored.state

  def restore_meta(self, step: int | None = None) -> dict | None:
    """The metadata of `step` (default: the newest readable checkpoint)."""
    steps = [step] if step is not None else self._steps_newest_first()
    for candidate in steps:
      try:
        return self._manager.restore(
          candidate, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
        ).meta
      except Exception as error:  # pylint: disable=broad-except
        if step is not None:
          raise
        self._warn_unreadable(candidate, error)
    return None

  def restore_latest(self, target: TrainState) -> TrainState | None:
    """The newest checkpoint that reads back whole; a truncated or corrupted one is named in a
    warning and skipped for the one before it (None when none is readable)."""
    for step in self._steps_newest_first():
      try:
        return self.restore(step, target)
      except Exception as error:  # pylint: disable=broad-except
        self._warn_unreadable(step, error)
    return None

  def _steps_newest_first(self) -> list[int]:
    return sorted(self._manager.all_steps(), reverse=True)

  def _warn_unreadable(self, step: int, error: Exception) -> None:
    message = (
      f'checkpoint {os.path.join(self.directory, str(step))} cannot be read '
      f'({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ""}); '
      'falling back to the one before it'
    )
    logging.warning(message)
    print(f'WARNING: {message}', file=sys.stderr, flush=True)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()


def read_meta(directory: str) -> dict | None:
  """The JSON metadata of the latest finished checkpoint in `directory`; None if there is none.

  Reads files only. An `ocp.CheckpointManager` would do here what it does everywhere in a
  multi-host run: a barrier (a collective) on creation and on restore. Only the processes that
  find the directory would take those barriers, and a barrier that its peers never enter pairs
  with whatever collective they run next (a training step), which hangs every process.
  """
  if not os.path.isdir(directory):
    return None
  latest = ocp.path.step.latest_step_metadata(directory, ocp.path.step.standard_name_format())
  if latest is None:
    return None
  return ocp.JsonCheckpointHandler().restore(latest.path / 'meta', args=ocp.args.JsonRestore())


def check_compatible(directory: str, expected: dict[str, Any], flag: str) -> None:
  """Raises ValueError if the checkpoint metadata in `directory` disagrees with `expected`.

  `expected` maps metadata keys (e.g. 'model', 'model_signature', 'split_digest') to values. Safe
  to call from one process of a multi-host run at any moment: see `read_meta`.
  """
  meta = read_meta(directory)
  if meta is None:
    return
  for key, value in expected.items():
    if key in meta and meta[key] != value:
      shown = (
        'the parameter shapes differ'
        if key == 'model_signature'
        else (f'it holds {meta[key]!r}, the run asks for {value!r}')
      )
      raise ValueError(
        f'{flag}: checkpoint directory {directory} was written for a different '
        f'{key}: {shown}. Use another workdir or delete it.'
      )
