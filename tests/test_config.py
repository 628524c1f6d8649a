"""Typed configs: every bad value of every section gets its one-line `ConfigError` before any
work (the binaries print it as one line, test_cli.py); methods and seeds parsed or refused."""

import dataclasses
import json
import os

import pytest

import jaxunlearn
from jaxunlearn import theory
from jaxunlearn.config import (
  ConfigError,
  OptimizerConfig,
  from_config_dict,
  get_field,
  parse_seeds,
  replace_field,
  to_config_dict,
)
from jaxunlearn.methods import registry, tuned_presets
from jaxunlearn.methods.registry import parse_methods

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (override, the error's start): one or more per section, and one per method.
BAD_VALUES = [
  # training
  ({'epochs': -1}, '--config.epochs=-1: must be an integer >= 1.'),
  ({'batch_size': 0}, '--config.batch_size=0: must be an integer >= 1.'),
  ({'optimizer.lr': -1.0}, '--config.optimizer.lr=-1.0: must be a number > 0.'),
  ({'optimizer.momentum': 1.0}, '--config.optimizer.momentum=1.0: must be a number in [0, 1).'),
  ({'optimizer.name': 'lion'}, "--config.optimizer.name='lion': must be one of sgd, adam, adamw."),
  ({'optimizer.schedule': 'warp'}, "--config.optimizer.schedule='warp': must be one of"),
  (
    {'optimizer.weight_decay': -0.1},
    '--config.optimizer.weight_decay=-0.1: must be a number >= 0.',
  ),
  ({'optimizer.lr': float('nan')}, '--config.optimizer.lr=nan: must be a number > 0.'),
  ({'checkpoint_every_steps': -5}, '--config.checkpoint_every_steps=-5: must be an integer >= 0.'),
  ({'keep_checkpoints': 0}, '--config.keep_checkpoints=0: must be an integer >= 1.'),
  ({'log_every': 0}, '--config.log_every=0: must be an integer >= 1.'),
  ({'num_devices': -2}, '--config.num_devices=-2: must be an integer >= -1.'),
  ({'best_metric': 'loss'}, "--config.best_metric='loss': must be one of , test_accuracy."),
  ({'workdir': ''}, "--config.workdir='': must name a directory."),
  # data
  ({'split_seed': -1}, '--config.split_seed=-1: must be an integer >= 0.'),
  ({'dataset': ' '}, "--config.dataset=' ': must name a dataset."),
  # evaluation
  ({'eval_batch_size': 0}, '--config.eval_batch_size=0: must be an integer >= 1.'),
  ({'mia_feature': 'loss'}, "--config.mia_feature='loss': must be one of confidence, entropy."),
  ({'mia_classifier': 'knn'}, "--config.mia_classifier='knn': must be one of svc, logreg."),
  # study
  ({'seeds': '0,0'}, "--config.seeds='0,0': give distinct non-negative integers"),
  ({'seeds': 'a'}, "--config.seeds='a': give distinct non-negative integers"),
  ({'original_seed': -2}, '--config.original_seed=-2: must be an integer >= 0.'),
  ({'methods': 'ft,forgetful'}, "--config.methods='ft,forgetful': unknown method 'forgetful'"),
  ({'methods': ''}, "--config.methods='': give method names"),
  ({'rerun': 'some'}, "--config.rerun='some': must be one of missing, all."),
  ({'results_name': 'a/b'}, "--config.results_name='a/b': must be a file name without a folder."),
  # distributed
  (
    {'distributed.num_processes': 2, 'distributed.process_id': 2},
    '--config.distributed.process_id=2: must be below num_processes (2).',
  ),
  ({'distributed.num_processes': -1}, '--config.distributed.num_processes=-1: must be an'),
  # methods
  ({'method.ft.epochs': 0}, '--config.method.ft.epochs=0: must be an integer >= 1.'),
  (
    {'method.salun.mask_fraction': 2.0},
    '--config.method.salun.mask_fraction=2.0: must be a number in (0, 1].',
  ),
  (
    {'method.salun.mask_fraction': 0.0},
    '--config.method.salun.mask_fraction=0.0: must be a number in (0, 1].',
  ),
  (
    {'method.ga.optimizer.grad_clip': -1.0},
    '--config.method.ga.optimizer.grad_clip=-1.0: must be a number >= 0.',
  ),
  (
    {'method.neggrad_plus.beta': 1.0},
    '--config.method.neggrad_plus.beta=1.0: must be a number in (0, 1).',
  ),
  ({'method.rl.batch_size': 0}, '--config.method.rl.batch_size=0: must be an integer >= 1.'),
  (
    {'method.l1_sparse.alpha': -1.0},
    '--config.method.l1_sparse.alpha=-1.0: must be a number >= 0.',
  ),
  (
    {'method.bad_teacher.temperature': 0.0},
    '--config.method.bad_teacher.temperature=0.0: must be a number > 0.',
  ),
  ({'method.scrub.msteps': 9}, '--config.method.scrub.msteps=9: must be <= epochs (5).'),
  (
    {'method.scrub.lr_decay_epochs': (0,)},
    '--config.method.scrub.lr_decay_epochs=(0,): must be a tuple of integers >= 1.',
  ),
  (
    {'method.salun.preset': 'nope'},
    "--config.method.salun.preset='nope': must be one of defaults, cifar10_resnet18, random_mnist5k.",
  ),
  ({'method.ce_ft.alpha': 1.5}, '--config.method.ce_ft.alpha=1.5: must be a number in (0, 1].'),
  ({'method.kl_ft.alpha': 0.0}, '--config.method.kl_ft.alpha=0.0: must be a number in (0, 1].'),
  ({'method.ice_ft.epochs': 0}, '--config.method.ice_ft.epochs=0: must be an integer >= 1.'),
  ({'method.sfron.iterations': 0}, '--config.method.sfron.iterations=0: must be an integer >= 1.'),
  (
    {'method.sfron.slow_rate': 1.5},
    '--config.method.sfron.slow_rate=1.5: must be a number in (0, 1].',
  ),
  (
    {'method.sfron.mask_on': 'weights'},
    "--config.method.sfron.mask_on='weights': must be one of gradient, update.",
  ),
  (
    {'method.sfron.remain_steps': 0},
    '--config.method.sfron.remain_steps=0: must be >= 1 unless forget_every = 1',
  ),
  (
    {'method.sfron.forget_optimizer.lr': 0.0},
    '--config.method.sfron.forget_optimizer.lr=0.0: must be a number > 0.',
  ),
  (
    {'method.ssd.selection_weighting': 0.0},
    '--config.method.ssd.selection_weighting=0.0: must be a number > 0.',
  ),
  (
    {'method.ssd.importance': 'fisher'},
    "--config.method.ssd.importance='fisher': must be one of batch, example.",
  ),
  ({'method.rfa_lora.rank': 0}, '--config.method.rfa_lora.rank=0: must be an integer >= 1.'),
  (
    {'method.rfa_lora.layers': 'last:0'},
    "--config.method.rfa_lora.layers='last:0': must be 'blocks'",
  ),
  (
    {'method.rfa_lora.layer_weights': '1,-2'},
    "--config.method.rfa_lora.layer_weights='1,-2': must be empty or numbers >= 0",
  ),
]


def _config(tmp_path, overrides):
  config = jaxunlearn.study_config(workdir=str(tmp_path / 'wd'))
  for key, value in overrides.items():
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config


@pytest.mark.parametrize('overrides, message', BAD_VALUES, ids=[','.join(o) for o, _ in BAD_VALUES])
def test_bad_value_is_one_line_before_any_work(tmp_path, overrides, message):
  with pytest.raises(ConfigError) as error:
    jaxunlearn.Study(_config(tmp_path, overrides))
  assert str(error.value).startswith(message), str(error.value)
  assert '\n' not in str(error.value)
  assert not (tmp_path / 'wd').exists()


def test_every_method_and_section_has_a_bad_value_above():
  covered = {
    key.split('.')[1]
    for overrides, _ in BAD_VALUES
    for key in overrides
    if key.startswith('method.')
  }
  assert covered == set(registry.names())


def test_every_numeric_field_has_a_range():
  def check(cls, path):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
      if isinstance(hints[field.name], type) and issubclass(
        hints[field.name], jaxunlearn.config.Config
      ):
        check(hints[field.name], f'{path}.{field.name}')
        continue
      rule = field.metadata['rule']
      if rule.kind in ('int', 'float', 'ints', 'floats'):
        assert rule.low is not None or rule.high is not None, f'{path}.{field.name} has no range'

  for name, method in registry.methods().items():
    check(method.config, f'method.{name}')
  for section in (
    jaxunlearn.config.DataConfig,
    jaxunlearn.config.TrainingConfig,
    jaxunlearn.config.EvalConfig,
    jaxunlearn.study.StudyConfig,
    jaxunlearn.study.DistributedConfig,
    theory.TheoryConfig,
  ):
    check(section, section.__name__)


def test_round_trip_and_unknown_keys():
  cfg = OptimizerConfig(lr=0.3, lr_decay_steps=(4, 8))
  assert from_config_dict(OptimizerConfig, to_config_dict(cfg), '--x') == cfg
  with pytest.raises(ConfigError, match=r'--x.lrr: unknown setting; allowed: '):
    from_config_dict(OptimizerConfig, {'lrr': 0.1}, '--x')
  # Integers where a number is expected are fine; the reverse is not.
  assert from_config_dict(OptimizerConfig, {'lr': 1}, '--x').lr == 1.0
  with pytest.raises(ConfigError, match='--config.method.ft.epochs=1.5: must be an integer'):
    registry.parse_config('ft', {'epochs': 1.5})


def test_unknown_method_is_refused():
  with pytest.raises(ConfigError, match='--config.methods.*unknown'):
    parse_methods('ft,forgetful')


@pytest.mark.parametrize('seeds', ['', '0,0', 'a', '-1'])
def test_bad_seeds_are_refused(seeds):
  with pytest.raises(ConfigError, match='--config.seeds'):
    parse_seeds(seeds)


def test_the_preset_picked_follows_the_forget_kind_and_dataset(monkeypatch):
  salun = registry.get('salun')
  declared = {('class', None): 'cifar10_resnet18', ('random', 'digits'): 'cifar10_resnet18'}
  monkeypatch.setitem(
    registry._METHODS, 'salun', dataclasses.replace(salun, forget_presets=declared)
  )
  preset = salun.preset('cifar10_resnet18')
  sections = jaxunlearn.study_config().method

  def pick(forget, dataset='mnist5k'):
    rows, picked = registry.method_rows(sections, 'salun', forget=forget, dataset=dataset)
    return picked['salun'], rows[0][2]

  assert pick('class:3') == ('cifar10_resnet18', preset)
  assert pick('random:0.1') == ('defaults', salun.config())
  assert pick('random:0.1', 'digits') == ('cifar10_resnet18', preset)
  # A field set in the section applies on top of the picked preset; a named preset wins.
  sections.salun.mask_fraction = 0.3
  assert pick('class:3') == ('cifar10_resnet18', preset.replace(mask_fraction=0.3))
  sections.salun.preset = 'defaults'
  assert pick('class:3') == ('defaults', salun.config().replace(mask_fraction=0.3))
  # The study picks from --config.forget and records what it picked.
  for forget, expected in (
    ('class:3', {'salun': 'cifar10_resnet18', 'ft': 'defaults'}),
    ('random:0.1', {'salun': 'defaults', 'ft': 'random_mnist5k'}),
  ):
    study = jaxunlearn.Study(jaxunlearn.study_config(forget=forget, methods='salun,ft'))
    assert study.presets == expected
  assert registry.describe_presets(study.presets, 'random:0.1', 'mnist5k') == (
    'method presets (forget random:0.1, dataset mnist5k): defaults: salun; random_mnist5k: ft'
  )


def test_one_preset_for_every_method_that_has_it():
  sections = jaxunlearn.study_config(preset='cifar10_resnet18').method
  rows, picked = registry.method_rows(sections, 'ft,ce_ft', forget='random:0.1')
  assert picked == {'ft': 'cifar10_resnet18', 'ce_ft': 'defaults'}
  assert rows[0][2] == registry.get('ft').preset('cifar10_resnet18')
  assert rows[1][2] == registry.get('ce_ft').config()


@pytest.mark.parametrize('record', tuned_presets.RECORDS, ids=lambda r: r.name)
def test_tuned_presets_are_their_records_choices(record):
  with open(os.path.join(REPO, record.record)) as f:
    tuned = json.load(f)['methods']
  assert record.choices == {name: choice['chosen'] for name, choice in tuned.items()}
  for name, choice in tuned.items():
    method = registry.get(name)
    assert method.preset_for(f'{record.forget}:1', record.dataset) == record.name
    assert method.preset_for('class:3' if record.forget != 'class' else 'random:0.1', None) != (
      record.name
    )
    config = method.preset(record.name)
    assert all(get_field(config, f) == v for f, v in choice['chosen'].items())
    # The rest is the preset the tuning started from, where its knobs had the record's `defaults`;
    # a new tuning starts from it too (`tuned=False`).
    start = config
    for field, value in choice['defaults'].items():
      start = replace_field(start, field, value)
    untuned = method.preset_for(f'{record.forget}:1', record.dataset, tuned=False)
    assert untuned != record.name and start == method.preset(untuned)


def test_tuned_presets_refuse_a_field_without_a_rule_and_a_bad_value():
  bad_field = registry.TunedPresets('t', 'random', 'digits', 'r.json', {'ft': {'optimizer': 1}})
  with pytest.raises(ValueError, match="'optimizer': not a field with a rule"):
    registry.add_tuned_presets(bad_field)
  bad_value = registry.TunedPresets('t', 'random', 'digits', 'r.json', {'ft': {'epochs': 0}})
  with pytest.raises(ConfigError, match=r'r.json: ft.epochs=0'):
    registry.add_tuned_presets(bad_value)
  assert 't' not in registry.get('ft').presets


def test_forget_presets_name_declared_presets():
  with pytest.raises(ValueError, match=r"forget_presets names unknown presets \['nope'\]"):
    registry.register(
      'never_registered',
      config=OptimizerConfig,
      title='t',
      forget_presets={('class', None): 'nope'},
    )(lambda ctx, cfg: None)
  assert 'never_registered' not in registry.names()
