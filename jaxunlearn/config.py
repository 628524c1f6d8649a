"""Typed, validated configs and their bridge to the ConfigDicts that the binaries' flags override.

A config section is a frozen dataclass of `Config` whose fields declare their allowed values::

  @dataclasses.dataclass(frozen=True)
  class SalunConfig(EpochMethodConfig):
    mask_fraction: float = number(0.5, gt=0, le=1)

`to_config_dict` turns defaults into an `ml_collections.ConfigDict` (what `--config.*` flags
override); `from_config_dict` turns it back into a typed value, checking every field against its
rule and the section's cross-field `constraints`. The first bad value raises `ConfigError`, one
line naming the full flag and what is allowed::

  --config.method.salun.mask_fraction=2: must be in (0, 1]

Validation runs before any data is built or any model trained (`jaxunlearn.study.Study`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Iterable
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A bad config value; the message is one line naming the flag and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Rule:
  """What a field allows: a type, an optional numeric range and an optional set of choices."""

  kind: str  # 'int', 'float', 'bool', 'str', 'ints' (tuple of int), 'floats' (of numbers), 'any'
  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  choices: tuple = ()

  def describe(self) -> str:
    if self.choices:
      return f'must be one of {", ".join(map(str, self.choices))}'
    noun = {
      'int': 'an integer',
      'float': 'a number',
      'bool': 'true or false',
      'str': 'a string',
      'ints': 'a tuple of integers',
      'floats': 'a tuple of numbers',
      'any': 'a value',
    }[self.kind]
    if self.low is not None and self.high is not None:
      left, right = '(' if self.low_open else '[', ')' if self.high_open else ']'
      return f'must be {noun} in {left}{_fmt(self.low)}, {_fmt(self.high)}{right}'
    if self.low is not None:
      return f'must be {noun} {">" if self.low_open else ">="} {_fmt(self.low)}'
    if self.high is not None:
      return f'must be {noun} {"<" if self.high_open else "<="} {_fmt(self.high)}'
    return f'must be {noun}'

  def allows(self, value) -> bool:
    if self.kind == 'ints':
      return isinstance(value, tuple) and all(self._number_ok(v, integral=True) for v in value)
    if self.kind == 'floats':
      return isinstance(value, tuple) and all(self._number_ok(v, integral=False) for v in value)
    if self.kind == 'bool':
      return isinstance(value, bool)
    if self.kind == 'str':
      return isinstance(value, str) and (not self.choices or value in self.choices)
    if self.kind in ('int', 'float'):
      return self._number_ok(value, integral=self.kind == 'int') and (
        not self.choices or value in self.choices
      )
    return True

  def _number_ok(self, value, *, integral: bool) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
      return False
    if integral and not isinstance(value, int):
      return False
    if not math.isfinite(value):
      return False
    if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
      return False
    return self.high is None or not (value > self.high or (self.high_open and value == self.high))


def _fmt(x: float) -> str:
  return f'{x:g}'


def _field(default, rule: Rule, doc: str):
  if isinstance(default, (list, dict)):
    raise TypeError('use nested() for mutable defaults')
  return dataclasses.field(default=default, metadata={'rule': rule, 'doc': doc})


def number(default: float, *, ge=None, gt=None, le=None, lt=None, doc: str = '') -> Any:
  """A float field; `ge`/`gt`/`le`/`lt` bound it."""
  low, low_open = (gt, True) if gt is not None else (ge, False)
  high, high_open = (lt, True) if lt is not None else (le, False)
  return _field(float(default), Rule('float', low, high, low_open, high_open), doc)


def integer(default: int, *, ge=None, gt=None, le=None, lt=None, doc: str = '') -> Any:
  """An int field; `ge`/`gt`/`le`/`lt` bound it."""
  low, low_open = (gt, True) if gt is not None else (ge, False)
  high, high_open = (lt, True) if lt is not None else (le, False)
  return _field(int(default), Rule('int', low, high, low_open, high_open), doc)


def choice(default: str, choices: Iterable[str], *, doc: str = '') -> Any:
  """A string field restricted to `choices`."""
  choices = tuple(choices)
  if default not in choices:
    raise ValueError(f'default {default!r} is not among {choices}')
  return _field(default, Rule('str', choices=choices), doc)


def flag(default: bool, *, doc: str = '') -> Any:
  return _field(bool(default), Rule('bool'), doc)


def text(default: str = '', *, doc: str = '') -> Any:
  return _field(str(default), Rule('str'), doc)


def integers(default: tuple = (), *, ge=None, doc: str = '') -> Any:
  """A tuple-of-ints field, each element >= `ge`."""
  return _field(tuple(default), Rule('ints', low=ge), doc)


def numbers(default: tuple = (), *, ge=None, gt=None, le=None, lt=None, doc: str = '') -> Any:
  """A tuple-of-floats field, each element bounded by `ge`/`gt`/`le`/`lt`."""
  low, low_open = (gt, True) if gt is not None else (ge, False)
  high, high_open = (lt, True) if lt is not None else (le, False)
  return _field(tuple(default), Rule('floats', low, high, low_open, high_open), doc)


def nested(factory, *, doc: str = '') -> Any:
  """A sub-config (a `Config` dataclass) built by `factory`."""
  return dataclasses.field(default_factory=factory, metadata={'doc': doc})


@dataclasses.dataclass(frozen=True)
class Config:
  """Base of every config section."""

  def constraints(self) -> Iterable[tuple[str, bool, str]]:
    """Cross-field rules: (field name, holds, what is allowed). Override to add some."""
    return ()

  def replace(self, **changes) -> Config:
    return dataclasses.replace(self, **changes)


def to_config_dict(config: Config) -> ml_collections.ConfigDict:
  """The ConfigDict of a config's values (nested sections become nested ConfigDicts)."""
  out = ml_collections.ConfigDict()
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    out[f.name] = to_config_dict(value) if isinstance(value, Config) else value
  return out


def from_config_dict(cls: type, values, path: str) -> Any:
  """A validated `cls` from a ConfigDict or mapping of its fields; `path` is the flag prefix
  (e.g. '--config.method.salun') used in error messages. Unknown keys are an error."""
  values = values.to_dict() if isinstance(values, ml_collections.ConfigDict) else dict(values)
  hints = typing.get_type_hints(cls)
  names = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - names)
  if unknown:
    raise ConfigError(f'{path}.{unknown[0]}: unknown setting; allowed: {", ".join(sorted(names))}.')
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in values:
      continue
    value = values[f.name]
    sub = hints[f.name]
    if isinstance(sub, type) and issubclass(sub, Config):
      kwargs[f.name] = from_config_dict(sub, value, f'{path}.{f.name}')
      continue
    rule: Rule = f.metadata['rule']
    if rule.kind == 'float':
      value = _as_float(value)
    if rule.kind in ('ints', 'floats') and isinstance(value, list):
      value = tuple(value)
    if rule.kind == 'floats' and isinstance(value, tuple):
      value = tuple(_as_float(v) for v in value)
    kwargs[f.name] = value
  return validate(cls(**kwargs), path)


def _as_float(value):
  """An int as a float (a flag's `1` where numbers are expected); anything else unchanged."""
  return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def validate(config: Config, path: str) -> Config:
  """Checks every field of `config` (recursively) and its constraints; returns it unchanged.

  Raises:
    ConfigError: the first bad value, as '{path}.{field}={value}: {what is allowed}'.
  """
  for f in dataclasses.fields(config):
    value = getattr(config, f.name)
    if isinstance(value, Config):
      validate(value, f'{path}.{f.name}')
      continue
    rule = f.metadata.get('rule')
    if rule is not None and not rule.allows(value):
      raise ConfigError(f'{path}.{f.name}={value!r}: {rule.describe()}.')
  for name, holds, allowed in config.constraints():
    if not holds:
      raise ConfigError(f'{path}.{name}={getattr(config, name)!r}: {allowed}.')
  return config


def get_field(config, dotted: str) -> Any:
  """The value of a dotted field ('optimizer.lr') of a typed config or a (Config)Dict of one."""
  for part in dotted.split('.'):
    config = getattr(config, part) if isinstance(config, Config) else config[part]
  return config


def replace_field(config: Config, dotted: str, value) -> Config:
  """A copy of the typed `config` with its dotted field set to `value` (not validated)."""
  head, _, rest = dotted.partition('.')
  if rest:
    value = replace_field(getattr(config, head), rest, value)
  return dataclasses.replace(config, **{head: value})


def field_rule(cls: type, dotted: str) -> Rule:
  """The `Rule` of a dotted field of the config class `cls`.

  Raises:
    ValueError: `dotted` names no field with a rule (a sub-config, or nothing).
  """
  *parents, leaf = dotted.split('.')
  for part in parents:
    cls = typing.get_type_hints(cls).get(part)
    if not (isinstance(cls, type) and issubclass(cls, Config)):
      raise ValueError(f'{dotted!r}: {part!r} is not a sub-config')
  fields = {f.name: f for f in dataclasses.fields(cls)}
  if leaf not in fields or 'rule' not in fields[leaf].metadata:
    raise ValueError(f'{dotted!r}: not a field with a rule of {cls.__name__}')
  return fields[leaf].metadata['rule']


def leaves(values: dict, prefix: str = '') -> dict[str, Any]:
  """{dotted key: value} of every non-dict value of the nested dict `values`."""
  out = {}
  for key, value in values.items():
    if isinstance(value, dict):
      out.update(leaves(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def set_leaf(values, dotted: str, value) -> None:
  """Sets a dotted key of the nested dict or ConfigDict `values` in place, making the dicts on
  its way."""
  *parents, leaf = dotted.split('.')
  for part in parents:
    if part not in values:
      values[part] = {}
    values = values[part]
  values[leaf] = value


OPTIMIZERS = ('sgd', 'adam', 'adamw')
SCHEDULES = ('constant', 'cosine', 'step', 'linear', 'onecycle')
COMPUTE_DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(Config):
  """An optax optimiser (`jaxunlearn.optim.make_optimizer`)."""

  name: str = choice('sgd', OPTIMIZERS)
  lr: float = number(0.05, gt=0, doc='peak learning rate')
  schedule: str = choice('cosine', SCHEDULES)
  momentum: float = number(0.9, ge=0, lt=1)
  weight_decay: float = number(
    5e-4,
    ge=0,
    doc="added to the gradient (PyTorch's convention) for sgd and adam; decoupled for adamw",
  )
  grad_clip: float = number(0.0, ge=0, doc='global-norm clip of the gradient; 0 = none')
  nesterov: bool = flag(False)
  lr_decay_steps: tuple = integers(
    (), ge=0, doc="steps at which 'step' multiplies the rate by lr_decay_factor"
  )
  lr_decay_factor: float = number(0.1, gt=0, le=1)


def sgd(
  lr: float,
  *,
  schedule: str = 'constant',
  momentum: float = 0.9,
  weight_decay: float = 5e-4,
  grad_clip: float = 0.0,
) -> OptimizerConfig:
  """SGD with the field's usual momentum and weight decay, constant rate unless told."""
  return OptimizerConfig(
    name='sgd',
    lr=lr,
    schedule=schedule,
    momentum=momentum,
    weight_decay=weight_decay,
    grad_clip=grad_clip,
  )


@dataclasses.dataclass(frozen=True)
class EpochMethodConfig(Config):
  """What every epoch-based unlearning method has: passes, batch size and optimiser."""

  epochs: int = integer(5, ge=1, doc="passes over the method's main data source")
  batch_size: int = integer(128, ge=1)
  optimizer: OptimizerConfig = nested(lambda: sgd(0.01))


# The experiment's own sections. Their fields are top-level keys of the binaries' configs
# (`--config.epochs`, `--config.forget`, ...), so `section_from_flat` picks them out by name.


@dataclasses.dataclass(frozen=True)
class DataConfig(Config):
  """Which data, and which part of it is forgotten."""

  dataset: str = text(
    'mnist5k',
    doc="a built-in ('mnist5k', 'digits'), any TFDS image dataset "
    'prepared under data_dir, or imagefolder:PATH',
  )
  data_dir: str = text('', doc="'' = $JAXUNLEARN_DATA_DIR or ~/.cache/jaxunlearn/tfds")
  forget: str = text(
    'random:0.1', doc='random:FRACTION | random:COUNT | class:K[,K...] | indices:PATH.npy'
  )
  split_seed: int = integer(0, ge=0)
  test_split: str = text('test', doc="the split evaluated as the test set (e.g. 'validation')")
  image_size: str = text(
    '', doc="'H,W' resizes every image once on load (needed when their sizes differ)"
  )
  augment: str = choice(
    'auto',
    ('auto', 'true', 'false'),
    doc='crop+flip; auto: colour images of at least 32x32 (not SVHN)',
  )
  train_subset: int = integer(
    0,
    ge=0,
    doc='N > 0: a stratified subset of N train examples '
    '(fixed seed, shared by every split seed); 0: all',
  )

  def constraints(self):
    return (
      ('dataset', bool(self.dataset.strip()), 'must name a dataset'),
      ('test_split', bool(self.test_split.strip()), 'must name a split'),
      (
        'image_size',
        self.image_size == '' or _is_size(self.image_size),
        "must be '' or 'H,W' with positive integers",
      ),
    )


def _is_size(value: str) -> bool:
  parts = value.split(',')
  return len(parts) == 2 and all(p.strip().isdigit() and int(p) > 0 for p in parts)


BEST_METRICS = ('', 'test_accuracy')


@dataclasses.dataclass(frozen=True)
class TrainingConfig(Config):
  """The recipe of the Original and Retrain models, and how runs are placed and saved."""

  workdir: str = text('workdir', doc='models and results go under it')
  model: str = text(
    'cnn', doc="a zoo name (cnn, mlp, resnet18, vit, ...) or an import path 'package.module:Name'"
  )
  features: str = text(
    '',
    doc="the model's feature points: '' (its feature_layers(), else every Conv/Linear/Einsum "
    "output and the head's input), 'type:CLASS' or paths 'a.b,c:input,name=d'",
  )
  original: str = text(
    '',
    doc='a trained Original to start from instead of training one: an Orbax checkpoint '
    'directory, .msgpack, .npz or .safetensors of nnx.state(model)',
  )
  init: str = text(
    '',
    doc='pre-trained weights the Original and Retrain start from (a fresh head each), then '
    'fine-tuned by the recipe; a weights file of the model (as for original) or of init_layout',
  )
  init_layout: str = text(
    '',
    doc="'' (the model's own tree) or a public layout read by models.load_pretrained, e.g. "
    'torchvision:resnet18, timm:vit_base_patch16_224',
  )
  num_devices: int = integer(
    -1,
    ge=-1,
    doc='data-parallel devices; 0 = every device JAX sees; -1 = every device, except on CPU: '
    'one device or one per core, whichever a timed probe of the training step finds faster',
  )
  batch_size: int = integer(128, ge=1)
  epochs: int = integer(15, ge=1)
  optimizer: OptimizerConfig = nested(OptimizerConfig)
  compute_dtype: str = choice(
    'float32', COMPUTE_DTYPES, doc='what layers compute in (parameters stay float32)'
  )
  checkpoint_every_steps: int = integer(200, ge=0, doc='0 = only at the end')
  keep_checkpoints: int = integer(2, ge=1)
  best_metric: str = choice('test_accuracy', BEST_METRICS)
  log_every: int = integer(50, ge=1)

  def constraints(self):
    return (
      ('workdir', bool(self.workdir.strip()), 'must name a directory'),
      (
        'init',
        not (self.init and self.original),
        'cannot be given with --config.original (a given Original is not trained from it)',
      ),
      ('init_layout', not self.init_layout or bool(self.init), 'needs --config.init'),
    )


MIA_FEATURES = ('confidence', 'entropy')
MIA_CLASSIFIERS = ('svc', 'logreg')


@dataclasses.dataclass(frozen=True)
class EvalConfig(Config):
  """How models are scored."""

  eval_batch_size: int = integer(512, ge=1)
  mia_feature: str = choice('confidence', MIA_FEATURES)
  mia_classifier: str = choice('svc', MIA_CLASSIFIERS)


def section_from_flat(cls: type, config, prefix: str = '--config') -> Any:
  """The section `cls` read from the same-named top-level keys of `config` (absent keys keep
  their defaults), validated."""
  names = [f.name for f in dataclasses.fields(cls)]
  values = {n: config[n] for n in names if n in config}
  return from_config_dict(cls, values, prefix)


def flat_defaults(*sections: Config) -> ml_collections.ConfigDict:
  """One flat ConfigDict holding the fields of every section in `sections`."""
  out = ml_collections.ConfigDict()
  for section in sections:
    out.update(to_config_dict(section))
  return out


RERUN = ('missing', 'all')


@dataclasses.dataclass(frozen=True)
class StudyConfig(Config):
  """Which rows and seeds a study runs, and what it writes."""

  methods: str = text('all', doc='method or group names separated by commas, or all')
  seeds: str = text('0', doc="seeds of Retrain and every method run, e.g. '0,1,2'; never the split")
  original_seed: int = integer(0, ge=0)
  no_train: bool = flag(False, doc='refuse to train a missing Original or Retrain')
  rerun: str = choice('missing', RERUN, doc='missing: reuse completed runs; all: redo them')
  only_report: bool = flag(False, doc='tabulate the completed runs; run nothing')
  plot: bool = flag(True)
  results_name: str = text('results', doc='writes {results_name}.json/.md/.png')

  def constraints(self):
    return (
      (
        'results_name',
        bool(self.results_name) and os.sep not in self.results_name,
        'must be a file name without a folder',
      ),
    )


@dataclasses.dataclass(frozen=True)
class DistributedConfig(Config):
  """Multi-host runs (every host runs the same command with its own process_id)."""

  coordinator_address: str = text(
    '', doc="HOST:PORT of process 0; '' = single host (or a TPU pod, where JAX finds it)"
  )
  num_processes: int = integer(0, ge=0)
  process_id: int = integer(0, ge=0)

  def constraints(self):
    return (
      (
        'process_id',
        self.num_processes == 0 or self.process_id < self.num_processes,
        f'must be below num_processes ({self.num_processes})',
      ),
    )


def training_config() -> ml_collections.ConfigDict:
  """The flat config of an experiment's data, training and evaluation (the training binary's)."""
  c = flat_defaults(DataConfig(), TrainingConfig(), EvalConfig())
  c.model_kwargs = ml_collections.ConfigDict()
  c.distributed = to_config_dict(DistributedConfig())
  return c


def parse_seeds(value, flag: str = '--config.seeds') -> list[int]:
  """Distinct non-negative seeds from '0,1,2'."""
  try:
    seeds = [int(s) for s in str(value).split(',') if s.strip()]
  except ValueError:
    seeds = []
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ConfigError(
      f'{flag}={value!r}: give distinct non-negative integers separated by commas, e.g. 0,1,2.'
    )
  return seeds
