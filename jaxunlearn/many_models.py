"""Many-model evaluation: K Retrain models and K runs of each method, trained as one program each.

One Original; K Retrain models (seeds 0..K-1) trained together (`loop.run_many`: a vmapped
program, the model axis sharded over devices); for every method row, K unlearning runs from the
Original (seeds 0..K-1), also together. Then, per method (`jaxunlearn.forgetting_quality`):

* the NeurIPS 2023 challenge's forgetting quality F (per forget example, epsilon from threshold
  attacks on the logit-scaled confidences of the K unlearned against the K retrained models) and
  its final score F * RA_u / RA_r * TA_u / TA_r; higher is better; comparable only at equal K;
* KLOM on forget, retain and test examples (median and 95th percentile); lower is better;
* relearn time: SGD steps on D_f until a model's forget accuracy is back at the Original's (capped),
  mean and std over the K models, beside Retrain's own.

Scores of one seed's models (UA, RA, TA) are means over the K models.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import evaluation, experiment, losses, report
from jaxunlearn import forgetting_quality as fq
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.config import Config, ConfigError, integer, number
from jaxunlearn.config import sgd as sgd_config
from jaxunlearn.data import preprocess
from jaxunlearn.data.device import DeviceData, padded_chunks
from jaxunlearn.loop import Program, StepKind, run_many
from jaxunlearn.methods import registry
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import apply_gradients, create_state, supervised_program
from jaxunlearn.unlearn import context


@dataclasses.dataclass(frozen=True)
class ManyModelsConfig(Config):
  """The many-model evaluation (`--config.eval.*` of experiments/many_models.py)."""
  num_models: int = integer(8, ge=2, doc='K: models per side (Retrain, each method)')
  model_devices: int = integer(0, ge=0, doc='devices of the mesh\'s model axis; 0 = all')
  relearn_steps: int = integer(100, ge=1, doc='the relearn-time cap (SGD steps on D_f)')
  relearn_lr: float = number(0.01, gt=0)
  relearn_batch_size: int = integer(64, ge=1)
  relearn_tolerance: float = number(0.0, ge=0, doc='points below the Original\'s forget '
                                    'accuracy that count as relearned')


def model_mesh(cfg: ManyModelsConfig):
  """The ('models', 'data') mesh; ConfigError unless K splits over its model devices."""
  devices = cfg.model_devices or jax.device_count()
  if devices > jax.device_count() or jax.device_count() % devices:
    raise ConfigError(f'--config.eval.model_devices={cfg.model_devices}: must divide the '
                      f'number of devices ({jax.device_count()}).')
  if cfg.num_models % devices:
    raise ConfigError(f'--config.eval.num_models={cfg.num_models}: must be a multiple of the '
                      f'model devices ({devices}).')
  return sharding_lib.make_model_mesh(devices)


def on_mesh(setup: experiment.Setup, mesh) -> experiment.Setup:
  """The experiment with its data placed on `mesh`."""

  def move(data: DeviceData) -> DeviceData:
    return DeviceData.create(np.asarray(data.images), np.asarray(data.labels), data.info,
                             data.sources, mesh)

  return dataclasses.replace(setup, mesh=mesh, train=move(setup.train), test=move(setup.test))


def _stack(trees: list) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _model(tree, k: int):
  return jax.tree.map(lambda x: x[k], tree)


def train_retrain_models(setup: experiment.Setup, seeds: list[int]) -> tuple[dict, float]:
  """K Retrain models (the training recipe on D_r, model k from seed k) trained together;
  returns their stacked variables and the wall time."""
  training = setup.training
  states, txs = [], None
  for seed in seeds:
    fns, variables = experiment.build_model(setup.config, setup.info, seed)
    program, txs = supervised_program(fns, training.optimizer,
                                      num_examples=len(setup.train.sources['retain']),
                                      batch_size=training.batch_size, epochs=training.epochs,
                                      source='retain')
    states.append(create_state(variables, txs))
  t0 = time.perf_counter()
  result = run_many(program, states, setup.train, mesh=setup.mesh, seeds=seeds,
                    log_every=training.log_every, name='retrain')
  return jax.device_get(result.state.variables), time.perf_counter() - t0


def unlearn_models(setup: experiment.Setup, method: str, cfg: Config, model_fns, original: dict,
                   seeds: list[int], cache_dir: str = '') -> tuple[dict, float, dict]:
  """K runs of `method` from the Original (run k with seed k), together; returns the stacked
  unlearned variables, the wall time (preparation included, compilation too) and the plans'
  info."""
  t0 = time.perf_counter()
  plans = [registry.get(method).build(
      context(setup, model_fns, original, seed=seed, batch_size=cfg.batch_size,
              cache_dir=cache_dir), cfg)
      for seed in seeds]
  result = run_many(plans[0].program, [p.state for p in plans], setup.train, mesh=setup.mesh,
                    seeds=seeds, constants=[p.constants for p in plans],
                    log_every=setup.training.log_every, name=method)
  final = jax.device_get(result.state)
  if plans[0].finalize is not None:
    variables = _stack([plans[k].finalize(_model(final, k)) for k in range(len(seeds))])
  else:
    variables = final.variables
  return variables, time.perf_counter() - t0, plans[0].info or {}


def relearn_accuracies(setup: experiment.Setup, model_fns, variables: dict, seeds: list[int],
                       cfg: ManyModelsConfig) -> np.ndarray:
  """Forget-set accuracy [K, relearn_steps + 1] of K models fine-tuned on D_f with SGD (before
  the first step, then after each); each model's batches follow its seed."""
  tx = make_optimizer(sgd_config(cfg.relearn_lr), cfg.relearn_steps)
  positions, weights = padded_chunks(setup.train.sources['forget'], cfg.relearn_batch_size)
  forget_set = {'positions': jnp.asarray(positions), 'weights': jnp.asarray(weights)}

  def set_accuracy(params, batch_stats, constants, images, labels):
    def chunk(xs):
      pos, w = xs
      x = preprocess(jnp.take(images, pos, axis=0), setup.info, train=False, key=None)
      logits, _ = model_fns.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
      return jnp.sum((jnp.argmax(logits, -1) == jnp.take(labels, pos)) * w)
    correct = jax.lax.map(chunk, (constants['forget_set']['positions'],
                                  constants['forget_set']['weights']))
    return 100.0 * jnp.sum(correct) / jnp.sum(constants['forget_set']['weights'])

  def relearn_step(state, batch, key, constants):
    del key
    data = batch['train']

    def loss_fn(params):
      logits, batch_stats = model_fns.apply({'params': params, 'batch_stats': state.batch_stats},
                                            data['image'], train=True)
      return losses.weighted_cross_entropy(logits, data['label'], data['weight']), batch_stats

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = apply_gradients(state.replace(batch_stats=batch_stats), grads, tx, 'main')
    accuracy = set_accuracy(state.params, state.batch_stats, constants,
                            constants['images'], constants['labels'])
    return state, {'loss': loss, 'forget_set_accuracy': accuracy}

  constants = {'forget_set': forget_set, 'images': setup.train.images,
               'labels': setup.train.labels}
  program = Program({'relearn': StepKind(relearn_step, {'train': 'forget'})},
                    ['relearn'] * cfg.relearn_steps, cfg.relearn_batch_size)
  states = [create_state(_model(variables, k), {'main': tx}) for k in range(len(seeds))]
  before = np.stack([np.asarray(jax.jit(set_accuracy)(
      s.params, s.batch_stats, constants, setup.train.images, setup.train.labels))
                     for s in states])
  result = run_many(program, states, setup.train, mesh=setup.mesh, seeds=seeds,
                    constants=[constants] * len(seeds), log_every=10**9, name='relearn',
                    keep_metrics=True)
  after = np.stack([np.asarray(m['forget_set_accuracy']) for m in result.step_metrics], axis=1)
  return np.concatenate([before[:, None], after], axis=1)


def scores_of(setup: experiment.Setup, model_fns, variables: dict, retrain_logits: dict,
              original_forget_accuracy: float, cfg: ManyModelsConfig,
              seeds: list[int]) -> tuple[dict, dict, dict]:
  """The many-model scores of K models (and their logits and per-example epsilons)."""
  logits = {name: evaluation.predict_many(model_fns, variables, data.images, setup.info,
                                          data.sources[source], mesh=setup.mesh,
                                          batch_size=setup.evaluation.eval_batch_size)
            for name, data, source in (('forget', setup.train, 'forget'),
                                       ('retain', setup.train, 'retain'),
                                       ('test', setup.test, 'test'))}
  labels = {'forget': np.asarray(setup.train.labels)[setup.train.sources['forget']],
            'retain': np.asarray(setup.train.labels)[setup.train.sources['retain']],
            'test': np.asarray(setup.test.labels)[setup.test.sources['test']]}
  accuracy = {name: 100.0 * np.mean(np.argmax(logits[name], -1) == labels[name])
              for name in logits}
  retrain_accuracy = {name: 100.0 * np.mean(np.argmax(retrain_logits[name], -1) == labels[name])
                      for name in retrain_logits}
  quality = fq.forgetting_quality(logits['forget'], retrain_logits['forget'], labels['forget'])
  final = fq.challenge_score(quality, retain_accuracy_unlearned=accuracy['retain'],
                             retain_accuracy_retrained=retrain_accuracy['retain'],
                             test_accuracy_unlearned=accuracy['test'],
                             test_accuracy_retrained=retrain_accuracy['test'])
  klom = fq.klom_report({name: (logits[name], retrain_logits[name], labels[name])
                         for name in logits})
  relearn = fq.relearn_time(relearn_accuracies(setup, model_fns, variables, seeds, cfg),
                            original_forget_accuracy, steps=np.arange(cfg.relearn_steps + 1),
                            tolerance=cfg.relearn_tolerance)
  summary = fq.relearn_summary(relearn)
  scores = {'UA': 100.0 - accuracy['forget'], 'RA': accuracy['retain'], 'TA': accuracy['test'],
            'F': quality.quality, 'score': final.score, 'K': quality.num_models,
            'relearn_steps': summary.mean, 'relearn_steps_std': summary.std,
            'relearn_reached': summary.num_reached}
  for name, value in klom.items():
    scores[f'KLOM_{name}_median'], scores[f'KLOM_{name}_p95'] = value.median, value.p95
  return scores, logits, {'epsilons': quality.epsilons, 'relearn_steps': relearn.steps}


COLUMNS = ('UA', 'RA', 'TA', 'F', 'score', 'KLOM_forget_median', 'KLOM_forget_p95',
           'KLOM_retain_median', 'KLOM_test_median', 'relearn_steps', 'wall_s')


def markdown_table(rows: dict[str, dict]) -> str:
  """One row per method (Retrain first) of the many-model scores."""
  lines = ['| Method | ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * (len(COLUMNS) + 1)]
  for name, scores in rows.items():
    cells = []
    for column in COLUMNS:
      value = scores.get(column)
      if value is None:
        cells.append('-')
      elif column == 'relearn_steps':
        cells.append(f'{value:.1f} ± {scores["relearn_steps_std"]:.1f}')
      else:
        cells.append(f'{value:.3f}' if column in ('F', 'score') or 'KLOM' in column
                     else f'{value:.2f}')
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


TABLE_NOTE = ('K models per row (seeds 0..K-1), scores averaged over them. F = the NeurIPS 2023 '
              'challenge forgetting quality (higher is better, comparable at equal K only); score = '
              'F x RA/RA_retrain x TA/TA_retrain; KLOM = KL between margin histograms over the K '
              'unlearned and K retrained models (lower is better); relearn_steps = SGD steps on '
              'D_f until the forget accuracy is back at the Original\'s (mean ± std, capped); '
              'wall_s = wall time of the K runs together (preparation and compilation included).')


def plot_epsilons(per_example: dict[str, np.ndarray], num_models: int, path: str,
                  title: str) -> None:
  """Per method, the share of forget examples in each epsilon bucket, as a stacked bar: the
  buckets that score at this K (width 0.5, worth 1, 1/2, ...), the rest below the cap, and the cap
  (the attacks told the unlearned models from the retrained ones perfectly)."""
  import matplotlib.pyplot as plt
  names = list(per_example)
  limit = fq.num_score_buckets(num_models) * fq.BUCKET_WIDTH
  edges = np.arange(0.0, limit + 1e-9, fq.BUCKET_WIDTH)
  labels = [f'{a:g}-{b:g} (scores {2.0 ** -i:g})' for i, (a, b) in enumerate(zip(edges[:-1],
                                                                                   edges[1:]))]
  labels += [f'{limit:g} to the cap (scores 0)', f'the cap, {fq.EPSILON_CAP:g} (perfectly told apart)']
  colours = list(plt.cm.Greens(np.linspace(0.85, 0.35, len(edges) - 1))) + ['0.7', 'tab:red']
  fig, ax = plt.subplots(figsize=(9, 0.55 * len(names) + 2.4))
  left = np.zeros(len(names))
  for b in range(len(labels)):
    shares = []
    for name in names:
      eps = np.asarray(per_example[name])
      if b < len(edges) - 1:
        inside = (eps >= edges[b]) & (eps < edges[b + 1])
      elif b == len(edges) - 1:
        inside = (eps >= limit) & (eps < fq.EPSILON_CAP)
      else:
        inside = eps >= fq.EPSILON_CAP
      shares.append(100.0 * np.mean(inside))
    ax.barh(names, shares, left=left, color=colours[b], label=labels[b])
    left += np.asarray(shares)
  ax.invert_yaxis()
  ax.set_xlim(0, 100)
  ax.set_xlabel(f'% of forget examples by per-example epsilon (K = {num_models} models per side)')
  ax.set_title(title, fontsize=10)
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
  fig.tight_layout()
  report.save_figure(fig, path)
  plt.close(fig)


def run(study, cfg: ManyModelsConfig, results_name: str = 'many_models') -> dict:
  """The many-model evaluation of `study`'s rows; writes {results_name}.json/.md/.png under
  {experiment_dir}/many_K{K}/ and returns the payload."""
  mesh = model_mesh(cfg)
  study.check_methods()
  seeds = list(range(cfg.num_models))
  original = study.original()
  setup = on_mesh(study.setup, mesh)
  fns = original.model_fns
  start = time.perf_counter()
  retrain_vars, retrain_wall = train_retrain_models(setup, seeds)
  retrain_logits = {name: evaluation.predict_many(fns, retrain_vars, data.images, setup.info,
                                                  data.sources[source], mesh=mesh)
                    for name, data, source in (('forget', setup.train, 'forget'),
                                               ('retain', setup.train, 'retain'),
                                               ('test', setup.test, 'test'))}
  forget_labels = np.asarray(setup.train.labels)[setup.train.sources['forget']]
  original_logits = evaluation.predict(fns, original.variables, study.setup.train.images,
                                       setup.info, setup.train.sources['forget'],
                                       mesh=study.setup.mesh)
  original_fa = 100.0 * float(np.mean(np.argmax(original_logits, -1) == forget_labels))
  rows, per_example = {}, {}
  retrain_scores, _, _ = scores_of(setup, fns, retrain_vars, retrain_logits, original_fa,
                                       cfg, seeds)
  # Retrain against itself says nothing of forgetting: it keeps its accuracies and relearn time.
  retrain_scores = {k: v for k, v in retrain_scores.items()
                    if k in ('UA', 'RA', 'TA', 'K') or k.startswith('relearn')}
  retrain_scores['wall_s'] = retrain_wall
  rows['Retrain'] = retrain_scores
  for row, method, method_cfg in study.rows:
    variables, wall, info = unlearn_models(setup, method, method_cfg, fns, original.variables,
                                           seeds, os.path.join(study.experiment_dir, 'cache'))
    scores, _, extra = scores_of(setup, fns, variables, retrain_logits, original_fa, cfg, seeds)
    scores.update(wall_s=wall, trainable_fraction=info.get('trainable_fraction', 1.0))
    rows[row], per_example[row] = scores, extra['epsilons']
    print(f'[many {row}] ' + ', '.join(f'{k} {scores[k]:.3f}' for k in (
        'UA', 'RA', 'TA', 'F', 'score', 'relearn_steps', 'wall_s')), flush=True)
  directory = os.path.join(study.experiment_dir, f'many_K{cfg.num_models}')
  title = (f'{study.data_config.dataset} / {study.training.model} / forget '
           f'{study.data_config.forget}: K = {cfg.num_models} models per row (seeds 0-'
           f'{cfg.num_models - 1})')
  payload = {'config': study.config.to_dict(), 'num_models': cfg.num_models, 'rows': rows,
             'epsilons': {k: v.tolist() for k, v in per_example.items()},
             'original_forget_accuracy': original_fa,
             'device': {'platform': jax.devices()[0].platform,
                        'kind': jax.devices()[0].device_kind, 'count': jax.device_count()},
             'wall_seconds': time.perf_counter() - start}
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    experiment.write_json(os.path.join(directory, f'{results_name}.json'), payload)
    table = markdown_table(rows)
    report.write_text(os.path.join(directory, f'{results_name}.md'),
                      f'# {title}\n\n{table}\n\n{TABLE_NOTE}\n')
    plot_epsilons(per_example, cfg.num_models, os.path.join(directory, f'{results_name}.png'),
                  title)
  return payload
