"""The method registry: each method module declares itself with `register`.

A method is one file in `jaxunlearn/methods/` that decorates its ``build(ctx, cfg) -> Plan`` with
`register`, naming its typed config (defaults sized for mnist5k and the small CNN), its presets
(e.g. the CIFAR-10 / ResNet-18 reference values, with their sources) and any groups of variants
(e.g. SFR-on's ablation). `jaxunlearn.methods` imports every module of the package, so the main
job, the benchmark and `reproduce_results` see a new method without any other edit.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from jaxunlearn.config import Config, ConfigError, from_config_dict, to_config_dict


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
    tune: the knobs an equal-budget tuning scales (`experiments/tune.py`), as dotted config
      fields: the learning rate (unless the method has none) and the weight that sets how hard
      the method pushes on D_f against D_r, where it has one; '1-NAME' scales 1 - NAME.
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

  def preset(self, name: str | None) -> Config:
    """The config of preset `name` (None or one the method lacks: its defaults)."""
    return self.presets[name]() if name in self.presets else self.config()


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
):
  """Decorator registering ``build(ctx, cfg) -> Plan`` as method `name` (see `Method`)."""

  def decorate(build):
    if name in _METHODS:
      raise ValueError(f'method {name!r} is registered twice')
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
    )
    return build

  return decorate


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
  """{method name: ConfigDict of its config}, the defaults or `preset` where a method has it;
  what ``--config.method.NAME.FIELD`` overrides."""
  return ml_collections.ConfigDict(
    {name: to_config_dict(m.preset(preset)) for name, m in methods().items()}
  )


def parse_config(name: str, values: Any, path: str | None = None) -> Config:
  """The validated typed config of method `name` from a ConfigDict (or a typed config)."""
  method = get(name)
  path = path or f'--config.method.{name}'
  if isinstance(values, Config):
    values = to_config_dict(values)
  return from_config_dict(method.config, values, path)


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


def method_rows(method_configs, methods: str) -> list[tuple[str, str, Config]]:
  """(row, method, validated config) of every run `methods` asks for, each config read from
  `method_configs` ({method: ConfigDict}, a study config's `method`); a group name runs its
  variants, each a row."""
  rows = []
  for name in parse_methods(methods):
    if name in groups():
      method = groups()[name]
      base = parse_config(method.name, method_configs[method.name])
      for row, variant in method.groups[name](base).items():
        path = f'--config.method.{method.name} ({row})'
        rows.append((row, method.name, parse_config(method.name, variant, path)))
    else:
      rows.append((name, name, parse_config(name, method_configs[name])))
  return rows
