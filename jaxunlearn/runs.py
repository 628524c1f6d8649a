"""The run store: where a study's runs go and how a run is recognised (files are written
through `jaxunlearn.files`, the one atomic writer).

A study's runs live under ``{experiment_dir}/runs/{method}_s{seed}_{fingerprint[:16]}/``: the
fingerprint is a digest of everything that determines the run (`fingerprint`), so a run is reused
only when all of it matches. A completed run holds its unlearned weights (Orbax, ``variables/``)
and ``run.json``, written last; an interrupted one holds ``checkpoints/`` (`RunCheckpointer`),
tagged with the fingerprint and the seconds already spent. One study at a time may run in an
experiment directory (`RunStore.lock`). Everything here takes paths: nothing knows a Study.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxunlearn.checkpoint import CheckpointManager, read_meta
from jaxunlearn.config import ConfigError
from jaxunlearn.files import write_json

MIN_FREE_BYTES = 100 * 2**20
RUN_FILE = 'run.json'


def weights_digest(variables: dict) -> str:
  """A digest of a model's weights (paths, shapes, dtypes and bytes)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def fingerprint(payload: dict) -> str:
  """The digest of a JSON-able description of a run."""
  return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_workdir(workdir: str, flag: str = '--config.workdir') -> None:
  """Raises ConfigError unless `workdir` (or, if it does not exist yet, its nearest existing
  parent) is a directory we can write a file into, on a disk with MIN_FREE_BYTES free. Leaves
  nothing behind."""
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise ConfigError(f'{flag}={workdir!r}: {existing} is a file, not a directory.')
  try:
    with tempfile.TemporaryFile(dir=existing):
      pass
  except OSError as error:
    raise ConfigError(
      f'{flag}={workdir!r}: cannot write into {existing} ({error.strerror}).'
    ) from None
  free = shutil.disk_usage(existing).free
  if free < MIN_FREE_BYTES:
    raise ConfigError(
      f'{flag}={workdir!r}: only {free / 2**20:.0f} MiB free on its disk; a '
      f'study needs at least {MIN_FREE_BYTES / 2**20:.0f} MiB.'
    )


class RunStore:
  """The runs of one experiment directory."""

  def __init__(self, experiment_dir: str):
    self.experiment_dir = experiment_dir

  def run_dir(self, method: str, seed: int, fingerprint_: str) -> str:
    """A run's directory, named by what it runs: rows with the same method, config and seed
    (e.g. 'sfron' and the ablation's all-on 'sfron-SFR') share one run."""
    return os.path.join(self.experiment_dir, 'runs', f'{method}_s{seed}_{fingerprint_[:16]}')

  def completed(self, method: str, seed: int, fingerprint_: str) -> dict | None:
    """The scores of the completed run with this fingerprint, or None."""
    path = os.path.join(self.run_dir(method, seed, fingerprint_), RUN_FILE)
    if not os.path.exists(path):
      return None
    with open(path) as f:
      saved = json.load(f)
    return saved['scores'] if saved.get('fingerprint') == fingerprint_ else None

  def checkpointer(
    self, method: str, seed: int, fingerprint_: str, every_steps: int, *, fresh: bool
  ) -> RunCheckpointer | None:
    """The checkpointer of a run about to start (None when `every_steps` is 0). Checkpoints of
    another run (or, with `fresh`, of this one) are removed first: nothing of them is reused."""
    directory = self.run_dir(method, seed, fingerprint_)
    checkpoints = os.path.join(directory, 'checkpoints')
    if fresh or not _checkpoint_matches(checkpoints, fingerprint_):
      shutil.rmtree(directory, ignore_errors=True)
    if not every_steps:
      return None
    return RunCheckpointer(checkpoints, every_steps, fingerprint_)

  def save(
    self,
    method: str,
    seed: int,
    fingerprint_: str,
    row: str,
    scores: dict,
    variables: dict | None,
  ) -> None:
    """Writes a completed run: its weights (if any), then run.json, then drops its checkpoints.
    Process 0 alone writes."""
    if jax.process_index() != 0:
      return
    directory = self.run_dir(method, seed, fingerprint_)
    os.makedirs(directory, exist_ok=True)
    if variables is not None:
      weights = os.path.abspath(os.path.join(directory, 'variables'))  # Orbax wants absolute
      shutil.rmtree(weights, ignore_errors=True)
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(weights, variables)
    # run.json goes last: its presence means a completed run.
    write_json(
      os.path.join(directory, RUN_FILE),
      {
        'method': method,
        'first_row': row,
        'seed': seed,
        'fingerprint': fingerprint_,
        'scores': scores,
      },
    )
    shutil.rmtree(os.path.join(directory, 'checkpoints'), ignore_errors=True)

  def variables(self, method: str, seed: int, fingerprint_: str, like: dict) -> dict:
    """The saved weights of a completed run, restored in the structure of `like`."""
    path = os.path.abspath(os.path.join(self.run_dir(method, seed, fingerprint_), 'variables'))
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, like))

  @contextlib.contextmanager
  def lock(self) -> Iterator[None]:
    """Refuses a second study running on the same experiment directory at once."""
    path = os.path.join(self.experiment_dir, 'study.lock')
    if jax.process_index() != 0:
      yield
      return
    os.makedirs(self.experiment_dir, exist_ok=True)
    owner = {'host': socket.gethostname(), 'pid': os.getpid()}
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      with open(path) as f:
        held = json.load(f) if os.path.getsize(path) else {}
      if held.get('host') == owner['host'] and not _alive(held.get('pid', -1)):
        os.remove(path)  # left by a killed run on this machine
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      else:
        raise ConfigError(
          f'--config.workdir: another study (pid {held.get("pid")} on '
          f'{held.get("host")}) is running in {self.experiment_dir}; wait for it '
          f'or remove {path} if it is gone.'
        ) from None
    with os.fdopen(fd, 'w') as f:
      json.dump(owner, f)
    try:
      yield
    finally:
      os.remove(path)


class RunCheckpointer(CheckpointManager):
  """A method run's checkpoints, tagged with the run's fingerprint and the seconds it has run.

  A checkpoint's seconds are those of the earlier parts plus this part's wall time from the
  checkpointer's creation (just before the method's preparation) to the save.
  """

  def __init__(self, directory: str, every_steps: int, fingerprint_: str):
    super().__init__(directory, every_steps=every_steps, keep=1, meta={'fingerprint': fingerprint_})
    self._start = time.perf_counter()
    meta = self.restore_meta()
    self._prior = float(meta['seconds']) if meta else 0.0

  def prior_seconds(self) -> float:
    """The seconds the run's earlier, interrupted parts took: read once, at creation, so that
    this part's own checkpoints never count towards it."""
    return self._prior

  def save(self, state, metrics: dict) -> None:
    self.meta = {**self.meta, 'seconds': self._prior + time.perf_counter() - self._start}
    super().save(state, metrics)


def _checkpoint_matches(directory: str, fingerprint_: str) -> bool:
  """Whether `directory` holds checkpoints of the run with `fingerprint_` (files only: no
  collective, so every process of a multi-host run may ask at any moment)."""
  try:
    meta = read_meta(directory)
  except Exception:  # noqa: BLE001 (unreadable: the run starts afresh)
    return False
  return bool(meta) and meta.get('fingerprint') == fingerprint_


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except (OSError, ValueError):
    return False
  return True
