"""The method registry: each method module declares itself with `register`.

A method is one file in `jaxunlearn/methods/` that decorates its ``build(ctx, cfg) -> Plan`` with
`register`, naming its typed config (defaults sized for mnist5k and the small CNN), its presets
(e.g. the CIFAR-10 / ResNet-18 reference values, with their sources), the preset each forget kind
and dataset starts from, and any groups of variants (e.g. SFR-on's ablation). `jaxunlearn.methods`
imports every module of the package, so the main job, the benchmark and `reproduce_results` see a
new method without any other edit.

Which preset a study starts from: a method's section of a study config holds its values and a
`preset` key: '' picks by the study's forget kind and dataset (the method's `forget_presets`, else
its defaults); a name (`DEFAULTS` among them) forces that preset. Presets chosen by the tuning rule
(`TunedPresets`, the records in `tuned_presets.py`) are added to every method they tuned and
picked for the forget kind and dataset they were tuned on. `resolve` reads a section as the
picked preset's values with every field that differs from the method's defaults (what a flag or a
config file set) on top, so ``--config.method.salun.mask_fraction=0.2`` applies to any preset. A
field set to exactly its default value therefore counts as not set; with
``--config.method.NAME.preset=defaults`` the section's values are taken as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxunlearn.config import (
  Config,
  ConfigError,
  field_rule,
  from_config_dict,
  leaves,
  replace_field,
  set_leaf,
  to_config_dict,
  validate,
)

DEFAULTS = 'defaults'  # the preset name of a method's own defaults


@dataclasses.dataclass(frozen=True)
class Method:
  """A registered unlearning method.

  Attributes:
    name: the name in ``--config.methods`` and in tables.
    build: ``build(ctx, cfg) -> Plan``.
    config: its typed config class; ``config()`` holds the mnist5k defaults.
    title: the method and its paper, for tables and docs.
    summary: one line on what is particular to this implementation.
    presets: preset name -> a function returning a config (e.g. 'cifar10_resnet18').
    groups: group name -> a function of the method's config returning {row name: config}, a
      set of variants that ``--config.methods=GROUP`` runs as rows of one table.
    check: ``check(cfg, model_fns, variables, model_name, image_shape)``, the checks of a config
      that need the model (raising `ConfigError`), run before any training; None: none.
    tune: the knobs the tuning rule grids (`jaxunlearn.tuning`), as dotted config fields: the
      learning rate (unless the method has none) and the weight that sets how hard the method
      pushes on D_f against D_r, where it has one; '1-NAME' scales 1 - NAME.
    forget_presets: (forget kind, dataset or None) -> the preset a study of that kind ('class',
      'random', 'indices') on that dataset starts from; (kind, None) serves every dataset. A kind
      without an entry starts from the defaults (`DEFAULTS`).
    tuned_from: tuned preset name -> the preset its tuning started from (`add_tuned_presets`).
  """

  name: str
  build: Callable
  config: type
  title: str
  summary: str = ''
  presets: Mapping[str, Callable[[], Config]] = dataclasses.field(default_factory=dict)
  groups: Mapping[str, Callable[[Config], dict[str, Config]]] = dataclasses.field(
    default_factory=dict
  )
  check: Callable | None = None
  tune: tuple[str, ...] = ('optimizer.lr',)
  forget_presets: Mapping[tuple[str, str | None], str] = dataclasses.field(default_factory=dict)
  tuned_from: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def preset(self, name: str | None) -> Config:
    """The config of preset `name` (None, `DEFAULTS` or one the method lacks: its defaults)."""
    return self.presets[name]() if name in self.presets else self.config()

  def preset_for(self, forget: str | None, dataset: str | None, *, tuned: bool = True) -> str:
    """The preset a study forgetting `forget` (a --config.forget spec, e.g. 'class:3') on
    `dataset` starts from: the one declared for (its kind, the dataset), else for (its kind,
    None), else `DEFAULTS`. An imagefolder dataset also matches by its folder's name. With
    `tuned` False, a tuned preset gives way to the preset its tuning started from."""
    kind = str(forget or '').partition(':')[0].strip()
    names = [dataset]
    if dataset and dataset.startswith('imagefolder:'):
      names.append(dataset.rstrip('/').rsplit('/', 1)[-1])
    picked = DEFAULTS
    for key in [(kind, name) for name in names] + [(kind, None)]:
      if key in self.forget_presets:
        picked = self.forget_presets[key]
        break
    while not tuned and picked in self.tuned_from:
      picked = self.tuned_from[picked]
    return picked


_METHODS: dict[str, Method] = {}


def register(
  name: str,
  *,
  config: type,
  title: str,
  summary: str = '',
  presets: Mapping[str, Callable[[], Config]] | None = None,
  groups: Mapping[str, Callable[[Config], dict]] | None = None,
  check: Callable | None = None,
  tune: tuple[str, ...] = ('optimizer.lr',),
  forget_presets: Mapping[tuple[str, str | None], str] | None = None,
):
  """Decorator registering ``build(ctx, cfg) -> Plan`` as method `name` (see `Method`)."""

  def decorate(build):
    if name in _METHODS:
      raise ValueError(f'method {name!r} is registered twice')
    unknown = sorted(
      p for p in (forget_presets or {}).values() if p != DEFAULTS and p not in (presets or {})
    )
    if unknown:
      raise ValueError(f'method {name!r}: forget_presets names unknown presets {unknown}')
    _METHODS[name] = Method(
      name,
      build,
      config,
      title,
      summary,
      dict(presets or {}),
      dict(groups or {}),
      check,
      tuple(tune),
      dict(forget_presets or {}),
    )
    return build

  return decorate


@dataclasses.dataclass(frozen=True)
class TunedPresets:
  """The choices of one tuning record (`experiments/tune.py`), as a preset of every method tuned.

  Attributes:
    name: the preset's name (e.g. 'random_mnist5k').
    forget: the forget kind tuned on ('class', 'random' or 'indices').
    dataset: the dataset tuned on.
    record: the tuning.json holding the choices (path in the repository).
    choices: {method: {dotted config field: its chosen value}}.
  """

  name: str
  forget: str
  dataset: str
  record: str
  choices: Mapping[str, Mapping[str, Any]]


def add_tuned_presets(tuned: TunedPresets) -> None:
  """Adds `tuned.name` to the presets of every method `tuned` has choices for, as the preset its
  tuning started from (the one picked for the kind and dataset until now) with the choices on
  top, and makes it the preset picked for (`tuned.forget`, `tuned.dataset`).

  Raises:
    ValueError: a method has the preset already, a choice names no field with a rule in its
      config, or a chosen value breaks one.
  """
  for name, choices in tuned.choices.items():
    method = get(name, f'{tuned.record}: method')
    if tuned.name in method.presets:
      raise ValueError(f'method {name!r} already has a preset {tuned.name!r}')
    for field in choices:
      field_rule(method.config, field)
    start = method.preset_for(tuned.forget, tuned.dataset)

    def build(method=method, start=start, choices=choices) -> Config:
      config = method.preset(start)
      for field, value in choices.items():
        config = replace_field(config, field, value)
      return config

    validate(build(), f'{tuned.record}: {name}')
    _METHODS[name] = dataclasses.replace(
      method,
      presets={**method.presets, tuned.name: build},
      forget_presets={**method.forget_presets, (tuned.forget, tuned.dataset): tuned.name},
      tuned_from={**method.tuned_from, tuned.name: start},
    )


def methods() -> dict[str, Method]:
  """Every registered method, by name (sorted)."""
  return dict(sorted(_METHODS.items()))


def names() -> list[str]:
  return list(methods())


def groups() -> dict[str, Method]:
  """Group name -> the method that declares it."""
  return {group: m for m in methods().values() for group in m.groups}


def get(name: str, flag: str = '--config.methods') -> Method:
  if name not in _METHODS:
    raise ConfigError(f'{flag}: unknown method {name!r}; allowed: {", ".join(names())}.')
  return _METHODS[name]


def config_dicts(preset: str | None = None) -> ml_collections.ConfigDict:
  """{method name: its section}: the ConfigDict of its defaults and a `preset` key, `preset` for
  the methods that have it and '' (by forget kind and dataset) for the others; what
  ``--config.method.NAME.FIELD`` and ``--config.method.NAME.preset`` override."""
  sections = {}
  for name, method in methods().items():
    section = to_config_dict(method.config())
    section.preset = preset if preset in method.presets else ''
    sections[name] = section
  return ml_collections.ConfigDict(sections)


def resolve(
  name: str,
  values: Any,
  path: str | None = None,
  *,
  forget: str | None = None,
  dataset: str | None = None,
  tuned: bool = True,
) -> tuple[str, Config]:
  """The preset picked for method `name` and its validated typed config (module docstring).

  Args:
    name: the method.
    values: its section (a ConfigDict or dict, with or without a `preset` key) or a typed config.
    path: the flag prefix of error messages (default ``--config.method.NAME``).
    forget: the study's --config.forget spec; None: no forget kind (the defaults, unless the
      section names a preset).
    dataset: the study's --config.dataset.
    tuned: False: a tuned preset picked by kind gives way to the one its tuning started from
      (what a tuning starts from, so that its command reproduces its record).

  Returns:
    (the picked preset's name, its config with the section's set fields on top).
  """
  method = get(name)
  path = path or f'--config.method.{name}'
  if isinstance(values, Config):
    values = to_config_dict(values)
  values = values.to_dict() if isinstance(values, ml_collections.ConfigDict) else dict(values)
  requested = values.pop('preset', '')
  picked = requested or method.preset_for(forget, dataset, tuned=tuned)
  if picked != DEFAULTS and picked not in method.presets:
    allowed = ', '.join([DEFAULTS, *method.presets])
    raise ConfigError(f'{path}.preset={requested!r}: must be one of {allowed}.')
  merged = to_config_dict(method.preset(picked)).to_dict()
  defaults = leaves(to_config_dict(method.config()).to_dict())
  for key, value in leaves(values).items():
    if key not in defaults or defaults[key] != value:
      set_leaf(merged, key, value)
  return picked, from_config_dict(method.config, merged, path)


def parse_config(name: str, values: Any, path: str | None = None) -> Config:
  """The validated typed config of method `name` from its section (a ConfigDict or dict, with or
  without a `preset` key) or a typed config, with no forget kind (`resolve`)."""
  return resolve(name, values, path)[1]


def parse_methods(value: str, flag: str = '--config.methods') -> list[str]:
  """Method and group names from a comma-separated string ('all' = every method)."""
  if str(value).strip() == 'all':
    return names()
  chosen = [m.strip() for m in str(value).split(',') if m.strip()]
  allowed = names() + sorted(groups())
  if not chosen:
    raise ConfigError(
      f'{flag}={value!r}: give method names separated by commas, or "all"; '
      f'allowed: {", ".join(allowed)}.'
    )
  unknown = [m for m in chosen if m not in allowed]
  if unknown:
    raise ConfigError(
      f'{flag}={value!r}: unknown method {unknown[0]!r}; allowed: all, {", ".join(allowed)}.'
    )
  if len(set(chosen)) != len(chosen):
    raise ConfigError(f'{flag}={value!r}: a method is listed twice.')
  return chosen


def method_rows(
  method_configs,
  methods: str,
  *,
  forget: str | None = None,
  dataset: str | None = None,
  tuned: bool = True,
) -> tuple[list[tuple[str, str, Config]], dict[str, str]]:
  """The rows `methods` asks for and the preset each of their methods starts from.

  Args:
    method_configs: {method: its section}, a study config's `method`.
    methods: method and group names separated by commas, or 'all'.
    forget: the study's --config.forget spec (`resolve`).
    dataset: the study's --config.dataset.
    tuned: False: start from what the tuned presets were tuned from (`resolve`).

  Returns:
    ([(row, method, validated config)], {method: the preset picked}); a group name runs its
    variants of its method's resolved config, each a row.
  """
  rows, picked = [], {}
  for name in parse_methods(methods):
    method = groups()[name] if name in groups() else get(name)
    picked[method.name], base = resolve(
      method.name, method_configs[method.name], forget=forget, dataset=dataset, tuned=tuned
    )
    if name in groups():
      for row, variant in method.groups[name](base).items():
        path = f'--config.method.{method.name} ({row})'
        rows.append((row, method.name, parse_config(method.name, variant, path)))
    else:
      rows.append((name, name, base))
  return rows, picked


def describe_presets(picked: dict[str, str], forget: str, dataset: str) -> str:
  """One line naming the preset each method of a study starts from."""
  by_preset = {}
  for name, preset in picked.items():
    by_preset.setdefault(preset, []).append(name)
  parts = '; '.join(f'{p}: {", ".join(names)}' for p, names in sorted(by_preset.items()))
  return f'method presets (forget {forget}, dataset {dataset}): {parts}'
