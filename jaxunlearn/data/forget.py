"""Forget-set specs and the split of a training set into D_f (forget) and D_r (retain).

A spec is one string, the --forget flag:
  random:0.1          a seeded random fraction of the train set (rounded half up)
  random:400          a seeded random count
  class:3, class:3,7  every train example of the listed classes
  indices:PATH.npy    positions into the train arrays, from a .npy file

The split depends only on (dataset, spec, seed): random draws come from
`np.random.default_rng(seed)` and nothing else, so the original, retrain and unlearning runs of one
experiment get the same split. It is saved to the run directory and identified by a digest.

A training subset (--config.train_subset=N) is drawn before the split: N train examples,
stratified by class, seeded by the fixed `SUBSET_SEED` rather than the split seed, because the
original model, which trains on the subset, is shared by every split of an experiment. The split's
positions then index the subset, and the subset's positions in the full train split are part of
the split's digest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re

import numpy as np

from jaxunlearn import files
from jaxunlearn.config import ConfigError
from jaxunlearn.data.builders import stratified_split
from jaxunlearn.data.sources import ArraySplit, DatasetInfo

KINDS = ('random', 'class', 'indices')
SPLIT_ARRAYS = 'split.npz'
SPLIT_META = 'split.json'
_ALLOWED = (
  "allowed forms: 'random:FRACTION' with 0 < FRACTION < 1 (e.g. random:0.1), "
  "'random:COUNT' (e.g. random:400), 'class:C' or 'class:C1,C2,...', "
  "'indices:PATH.npy'"
)
_INTEGER = re.compile(r'[+-]?\d+')
SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True)
class ForgetSpec:
  """A parsed --forget spec.

  `value` is a fraction (float) or a count (int) for 'random', the sorted classes for 'class',
  and the file path for 'indices'.
  """

  kind: str
  value: float | int | tuple[int, ...] | str


@dataclasses.dataclass(frozen=True)
class ForgetSplit:
  """The forget set D_f and retain set D_r of one experiment.

  `forget` and `retain` are sorted int64 positions that partition the train arrays. For class
  forgetting, `test_forget` and `test_retain` split the test arrays into forgotten-class and
  remaining-class positions; otherwise both are None. With a training subset, `subset` holds its
  sorted positions in the full train split (the train arrays are that subset); else it is None.
  """

  dataset: str
  spec: str
  seed: int
  kind: str
  forget: np.ndarray
  retain: np.ndarray
  classes: tuple[int, ...]
  test_forget: np.ndarray | None
  test_retain: np.ndarray | None
  digest: str
  subset: np.ndarray | None = None

  def summary(self) -> dict:
    """What results files say of the split."""
    return {
      'spec': self.spec,
      'seed': self.seed,
      'digest': self.digest,
      'num_forget': len(self.forget),
      'num_retain': len(self.retain),
    }


def _bad_spec(spec: str, problem: str) -> ValueError:
  return ConfigError(f'--config.forget={spec!r}: {problem}; {_ALLOWED}.')


def parse_forget_spec(spec: str) -> ForgetSpec:
  """Parses a --forget string. Checks the syntax only; ranges need the data (make_forget_split)."""
  if not isinstance(spec, str) or ':' not in spec:
    raise _bad_spec(str(spec), "expected 'KIND:VALUE'")
  kind, _, value = (part.strip() for part in spec.partition(':'))
  if kind not in KINDS:
    raise _bad_spec(spec, f'unknown kind {kind!r}')
  if not value:
    raise _bad_spec(spec, f'missing value after {kind!r}')
  if kind == 'random':
    if _INTEGER.fullmatch(value):
      return ForgetSpec('random', int(value))
    try:
      fraction = float(value)
    except ValueError:
      raise _bad_spec(spec, 'random needs a fraction or a count') from None
    if not 0.0 < fraction < 1.0:
      raise _bad_spec(spec, f'fraction {value} is outside (0, 1)')
    return ForgetSpec('random', fraction)
  if kind == 'class':
    parts = [part.strip() for part in value.split(',')]
    if not all(_INTEGER.fullmatch(part) for part in parts):
      raise _bad_spec(spec, 'class needs comma-separated integers')
    classes = [int(part) for part in parts]
    if len(set(classes)) != len(classes):
      raise _bad_spec(spec, 'a class is listed twice')
    return ForgetSpec('class', tuple(sorted(classes)))
  if not value.endswith('.npy'):
    raise _bad_spec(spec, 'indices needs the path of a .npy file')
  return ForgetSpec('indices', value)


def forget_split_digest(
  dataset: str, forget: np.ndarray, num_train: int, subset: np.ndarray | None = None
) -> str:
  """sha256 hex digest of the dataset name in UTF-8, a NUL byte, then num_train and the sorted
  forget positions as little-endian int64; with a training subset, then the bytes b'subset' and
  its sorted positions as little-endian int64."""
  digest = hashlib.sha256(dataset.encode('utf-8') + b'\0')
  digest.update(np.asarray([num_train], '<i8').tobytes())
  digest.update(np.sort(np.asarray(forget)).astype('<i8').tobytes())
  if subset is not None:
    digest.update(b'subset' + np.sort(np.asarray(subset)).astype('<i8').tobytes())
  return digest.hexdigest()


def select_train_subset(
  train: ArraySplit, size: int, num_classes: int
) -> tuple[ArraySplit, np.ndarray | None]:
  """The training subset of --config.train_subset: `size` examples of `train`, or all for 0.

  The draw is stratified by class (each class gets its share of `size`, rounded by largest
  remainder) and seeded by `SUBSET_SEED`, so it depends only on the train labels and `size`.

  Args:
    train: the full train split.
    size: how many examples to keep; 0 keeps them all.
    num_classes: the dataset's number of classes (the smallest allowed size).

  Returns:
    (the subset's arrays, its sorted int64 positions in `train`), or (`train`, None) for 0.
  """
  if (
    isinstance(size, bool)
    or not isinstance(size, (int, np.integer))
    or not (size == 0 or num_classes <= size <= len(train))
  ):
    raise ConfigError(
      f'--config.train_subset: got {size!r}; allowed: 0 (the whole train split) or '
      f'{num_classes} (one example per class) to {len(train)} (the train split).'
    )
  if size == 0:
    return train, None
  if size == len(train):
    positions = np.arange(len(train), dtype=np.int64)
  else:
    positions = stratified_split(train.labels, int(size), SUBSET_SEED)[1]
  subset = ArraySplit(
    images=train.images[positions], labels=train.labels[positions], index=train.index[positions]
  )
  return subset, positions


def data_name(dataset: str, train_subset: int = 0) -> str:
  """A directory-safe name for an experiment's training data.

  The dataset's name with every run of characters other than letters, digits, '.', '_' and '-'
  replaced by '-', then '-subsetN' for a training subset of N examples.
  """
  name = re.sub(r'[^A-Za-z0-9._-]+', '-', dataset).strip('-')
  return f'{name}-subset{train_subset}' if train_subset else name


def _random_forget(spec: str, value: float | int, seed: int, num_train: int) -> np.ndarray:
  if isinstance(value, float):
    count = math.floor(value * num_train + 0.5)
    if not 0 < count < num_train:
      raise _bad_spec(
        spec,
        f'fraction {value} of {num_train} train examples is {count} '
        'examples, which leaves an empty forget or retain set',
      )
  else:
    count = value
    if not 0 < count < num_train:
      raise _bad_spec(
        spec,
        f'count {count} is outside [1, {num_train - 1}] ({num_train} train '
        'examples; the forget and retain sets must both be non-empty)',
      )
  return np.sort(np.random.default_rng(seed).choice(num_train, size=count, replace=False))


def _class_forget(
  spec: str, classes: tuple[int, ...], labels: np.ndarray, num_classes: int
) -> np.ndarray:
  outside = [c for c in classes if not 0 <= c < num_classes]
  if outside:
    raise _bad_spec(spec, f'class {outside} outside [0, {num_classes - 1}]')
  forget = np.flatnonzero(np.isin(labels, classes))
  if forget.size == 0:
    raise _bad_spec(spec, f'no train example has class {list(classes)}, so the forget set is empty')
  if forget.size == labels.size:
    raise _bad_spec(spec, 'every train example is in a forgotten class, so the retain set is empty')
  return forget


def _indices_forget(spec: str, path: str, num_train: int) -> np.ndarray:
  if not os.path.isfile(path):
    raise _bad_spec(spec, f'indices file {path} does not exist')
  try:
    positions = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as err:
    raise _bad_spec(spec, f'cannot read {path} as .npy ({err})') from None
  if positions.ndim != 1 or not np.issubdtype(positions.dtype, np.integer):
    raise _bad_spec(
      spec,
      f'{path} holds a {positions.dtype} array of shape {positions.shape}; '
      'expected a 1-D integer array',
    )
  if positions.size == 0:
    raise _bad_spec(spec, f'{path} is empty, so the forget set is empty')
  if positions.min() < 0 or positions.max() >= num_train:
    raise _bad_spec(
      spec, f'{path} has positions outside [0, {num_train - 1}] ({num_train} train examples)'
    )
  if np.unique(positions).size != positions.size:
    raise _bad_spec(spec, f'{path} lists a position more than once')
  if positions.size == num_train:
    raise _bad_spec(spec, f'{path} lists every train example, so the retain set is empty')
  return np.sort(positions)


def make_forget_split(
  spec: str,
  seed: int,
  train: ArraySplit,
  test: ArraySplit,
  info: DatasetInfo,
  *,
  subset: np.ndarray | None = None,
) -> ForgetSplit:
  """Splits `train` into D_f and D_r as `spec` says (see the module docstring).

  `seed` drives the random kind only; class and indices splits do not depend on it. `subset`,
  from `select_train_subset`, says that `train` is that subset of the train split. Raises
  ValueError naming --forget when the spec is malformed or leaves D_f or D_r empty.
  """
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'seed: the forget-split seed must be a non-negative integer, got {seed!r}.')
  parsed = parse_forget_spec(spec)
  num_train = len(train.labels)
  classes: tuple[int, ...] = ()
  test_forget = test_retain = None
  if parsed.kind == 'random':
    forget = _random_forget(spec, parsed.value, int(seed), num_train)
  elif parsed.kind == 'class':
    classes = parsed.value
    forget = _class_forget(spec, classes, train.labels, info.num_classes)
    in_classes = np.isin(test.labels, classes)
    test_forget = np.flatnonzero(in_classes).astype(np.int64)
    test_retain = np.flatnonzero(~in_classes).astype(np.int64)
  else:
    forget = _indices_forget(spec, parsed.value, num_train)
  forget = forget.astype(np.int64)
  return ForgetSplit(
    dataset=info.name,
    spec=spec,
    seed=int(seed),
    kind=parsed.kind,
    forget=forget,
    retain=np.setdiff1d(np.arange(num_train, dtype=np.int64), forget),
    classes=classes,
    test_forget=test_forget,
    test_retain=test_retain,
    digest=forget_split_digest(info.name, forget, num_train, subset),
    subset=subset,
  )


def save_forget_split(split: ForgetSplit, directory: str) -> None:
  """Writes split.npz (the positions), then split.json (the rest), each atomically.

  split.json goes last, so its presence means a complete save.
  """
  os.makedirs(directory, exist_ok=True)
  arrays = {'forget': split.forget, 'retain': split.retain}
  if split.test_forget is not None:
    arrays.update(test_forget=split.test_forget, test_retain=split.test_retain)
  meta = {
    'dataset': split.dataset,
    'spec': split.spec,
    'seed': split.seed,
    'kind': split.kind,
    'classes': list(split.classes),
    'num_train': int(split.forget.size + split.retain.size),
    'num_forget': int(split.forget.size),
    'digest': split.digest,
  }
  if split.subset is not None:
    arrays['subset'] = split.subset
    meta['train_subset'] = int(split.subset.size)
  with files.atomic_file(os.path.join(directory, SPLIT_ARRAYS), 'wb') as f:
    np.savez(f, **arrays)
  files.write_text(os.path.join(directory, SPLIT_META), json.dumps(meta, indent=2) + '\n')


def load_forget_split(directory: str) -> ForgetSplit | None:
  """Reads the split that save_forget_split wrote to `directory`; None if there is none.

  Raises ValueError if the saved positions do not match the saved digest.
  """
  meta_path = os.path.join(directory, SPLIT_META)
  if not os.path.isfile(meta_path):
    return None
  with open(meta_path, encoding='utf-8') as f:
    meta = json.load(f)
  with np.load(os.path.join(directory, SPLIT_ARRAYS), allow_pickle=False) as saved:
    arrays = {name: saved[name].astype(np.int64) for name in saved.files}
  forget, retain, num_train = arrays['forget'], arrays['retain'], meta['num_train']
  subset = arrays.get('subset')
  digest = forget_split_digest(meta['dataset'], forget, num_train, subset)
  partition = np.array_equal(np.sort(np.concatenate([forget, retain])), np.arange(num_train))
  if digest != meta['digest'] or not partition:
    raise ValueError(
      f'{directory}: the saved forget split is inconsistent (digest '
      f'{meta["digest"]}; its positions give {digest}).'
    )
  return ForgetSplit(
    dataset=meta['dataset'],
    spec=meta['spec'],
    seed=meta['seed'],
    kind=meta['kind'],
    forget=forget,
    retain=retain,
    classes=tuple(meta['classes']),
    test_forget=arrays.get('test_forget'),
    test_retain=arrays.get('test_retain'),
    digest=meta['digest'],
    subset=subset,
  )
