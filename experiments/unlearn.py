r"""The main job: unlearn with every method and compare each with Retrain.

  python -m experiments.unlearn                       # all methods, mnist5k, small CNN, random 10%
  python -m experiments.unlearn --config.methods=ft,salun --config.seeds=0,1,2 \
      --config.forget=class:3

Finds (or trains) the original and the retrained models of the experiment, runs each method for
each seed, and writes results.json, results.md and results.png into the experiment directory
({workdir}/{dataset}-{model}/{forget}-split{k}/), printing the table at the end.
"""

import os
import platform
import time
from importlib import metadata

import jax
from absl import app, logging
from ml_collections import config_flags

from experiments.configs import sfron as sfron_config
from jaxunlearn import experiment, report, sharding
from jaxunlearn.methods import sfron
from jaxunlearn.unlearn import (add_reference_scores, parse_methods, parse_seeds, run_method,
                                summarise)

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(os.path.dirname(__file__), 'configs', 'unlearn.py'),
    'Unlearning config file.', lock_config=True)
# Names that run several named variants of one method: name -> (method, variants(config)).
METHOD_GROUPS = {'sfron_ablation': ('sfron', sfron.ablation_configs),
                 'sfron_variants': ('sfron', sfron_config.variants)}
_PACKAGES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'tensorflow-datasets',
             'scikit-learn', 'numpy')


def require_trained(setup, kind: str, seed: int) -> None:
  path = os.path.join(experiment.run_dir(setup, kind, seed), 'metrics.json')
  if not os.path.exists(path):
    raise ValueError(f'--config.no_train is set but the {kind} model (seed {seed}) is missing: '
                     f'{path} does not exist. Train it with experiments.train, or drop no_train.')


def method_runs(config) -> list[tuple]:
  """(row name, method, method config) of every run that `--config.methods` asks for; a group
  name (METHOD_GROUPS) runs its variants."""
  names = [n.strip() for n in str(config.methods).split(',')]
  plain = ','.join(n for n in names if n and n not in METHOD_GROUPS)
  groups = [n for n in names if n in METHOD_GROUPS]
  runs = [(n, n, config.method[n]) for n in (parse_methods(plain) if plain or not groups else [])]
  for group in groups:
    method, variants = METHOD_GROUPS[group]
    runs += [(row, method, cfg) for row, cfg in variants(config.method[method]).items()]
  return runs


def with_mask_cache(method_cfg, experiment_dir: str):
  """A method config with an empty `mask_cache_dir` caches its saliency statistics (keyed by
  checkpoint and split) in the experiment directory."""
  if method_cfg.get('mask_cache_dir', None) != '':
    return method_cfg
  method_cfg = method_cfg.copy_and_resolve_references()
  method_cfg.mask_cache_dir = os.path.join(experiment_dir, 'mask_cache')
  return method_cfg


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  run_experiment(_CONFIG.value)


def run_experiment(config) -> dict:
  """Runs the comparison described by `config`; returns the results payload."""
  runs = method_runs(config)
  methods = [row for row, _, _ in runs]
  seeds = parse_seeds(config.seeds)
  dist = config.distributed
  sharding.maybe_initialize_distributed(dist.coordinator_address or None,
                                        dist.num_processes or None, dist.process_id)
  start = time.perf_counter()
  setup = experiment.prepare(config)
  if config.no_train:
    require_trained(setup, 'original', config.original_seed)
    for seed in seeds:
      require_trained(setup, 'retrain', seed)
  model_fns, original, original_scores = experiment.train_model(
      setup, kind='original', seed=config.original_seed)
  per_seed = {'Original': [], 'Retrain': []}
  per_seed.update({name: [] for name in methods})
  for seed in seeds:
    _, retrain_vars, retrain_train_scores = experiment.train_model(setup, kind='retrain',
                                                                   seed=seed)
    retrain_scores, retrain_logits = experiment.evaluate(setup, model_fns, retrain_vars, seed=seed)
    retrain_scores.update(RTE_s=retrain_train_scores['run_seconds'], KL=0.0, AvgGap=0.0)
    per_seed['Retrain'].append(retrain_scores)
    orig_scores, orig_logits = experiment.evaluate(setup, model_fns, original, seed=seed)
    orig_scores['RTE_s'] = original_scores['run_seconds']
    add_reference_scores(orig_scores, orig_logits, retrain_scores, retrain_logits)
    per_seed['Original'].append(orig_scores)
    for name, method, method_cfg in runs:
      result = run_method(setup, method, with_mask_cache(method_cfg, setup.experiment_dir),
                          model_fns, original, seed=seed,
                          retrain_logits=retrain_logits, retrain_scores=retrain_scores)
      per_seed[name].append(result.scores)
      print(f'[{name} s{seed}] ' + ', '.join(
          f'{k} {result.scores[k]:.2f}' for k in ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'RTE_s')),
          flush=True)
  rows = {name: summarise(scores) for name, scores in per_seed.items()}
  payload = {
      'config': config.to_dict(), 'methods': methods, 'seeds': seeds,
      'split': {'spec': setup.split.spec, 'seed': setup.split.seed, 'digest': setup.split.digest,
                'num_forget': len(setup.split.forget), 'num_retain': len(setup.split.retain)},
      'per_seed': per_seed, 'summary': rows,
      'versions': {p: metadata.version(p) for p in _PACKAGES},
      'device': {'platform': jax.devices()[0].platform, 'kind': jax.devices()[0].device_kind,
                 'count': jax.device_count(), 'host': platform.machine()},
      'wall_seconds': time.perf_counter() - start,
      'mia_convention': 'MIA-Efficacy: % of D_f predicted non-member',
  }
  title = (f'{config.dataset} / {config.model} / forget {config.forget} (split seed '
           f'{config.split_seed}), seeds {",".join(map(str, seeds))}')
  if jax.process_index() == 0:
    table = report.write_results(setup.experiment_dir, payload, rows,
                                 class_wise=setup.split.test_forget is not None, title=title,
                                 make_plot=config.plot, name=config.results_name)
    print(f'\n{title}\n{table}\n\n{report.TABLE_NOTE}\n')
    print(f'Results in {setup.experiment_dir} (wall time {payload["wall_seconds"]:.0f} s)')
  return payload


if __name__ == '__main__':
  app.run(main)
