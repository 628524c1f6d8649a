"""Many-model evaluation: K models per row, each set trained as one program.

K Originals (the training recipe on all of D, seeds 0..K-1) and K Retrain models (on D_r,
seeds 0..K-1), each set trained together (`loop.run_many`: the model axis spread over devices);
for every method row, K unlearning runs, run k from Original k with seed k, also together. Two
reference rows bound every score:

* Control: a second, independent set of K Retrain models (seeds K..2K-1) scored as if it were a
  method. Retrain cannot be told from Retrain, so its F is the best attainable at this K and
  data size (below 1 only through the attacks' sampling noise): the ceiling.
* Original: the K Originals scored as a method: what no forgetting at all scores, the floor.

One Original per run (`originals='per_model'`, the default) follows KLOM's protocol: the
unlearned set then varies as much as the retrained one does. With `originals='one'` every run
starts from the study's single Original, as the NeurIPS 2023 challenge did; K runs of a method
from one model vary far less than K trainings, so the attacks separate them from Retrain on
almost every example whatever they forget (digits MLP, K = 128: F <= 0.006 for every method,
below the floor of 0.091).

Per row (`jaxunlearn.forgetting_quality`):

* the NeurIPS 2023 challenge's forgetting quality F (per forget example, epsilon from threshold
  attacks on the logit-scaled confidences of the row's K models against the K Retrain models),
  with a 95% bootstrap interval over forget examples, and its final score F * RA_u / RA_r *
  TA_u / TA_r; higher is better; comparable only at equal K;
* KLOM on forget, retain and test examples (median and 95th percentile); lower is better;
* relearn time: SGD steps on D_f until a model's forget accuracy is back at the Original's
  (capped), mean and std over the K models, beside Retrain's own;
* the single-model scores averaged over the K models: UA, RA, TA, MIA and, per model against
  Retrain's mean, Avg. Gap and ToW.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxunlearn import evaluation, figures, metrics, report
from jaxunlearn import forgetting_quality as fq
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.config import Config, ConfigError, choice, integer, number
from jaxunlearn.config import sgd as sgd_config
from jaxunlearn.data import gather_images
from jaxunlearn.data.device import padded_chunks
from jaxunlearn.experiment import Experiment
from jaxunlearn.loop import Program, StepKind, run_many
from jaxunlearn.methods import registry
from jaxunlearn.optim import make_optimizer
from jaxunlearn.train import create_state, supervised_step

ORIGINALS = ('per_model', 'one')


@dataclasses.dataclass(frozen=True)
class ManyModelsConfig(Config):
  """The many-model evaluation (`--config.eval.*` of experiments/many_models.py)."""

  num_models: int = integer(
    128, ge=3, doc='K: models per row (Retrain, control, Original, each method)'
  )
  model_devices: int = integer(0, ge=0, doc="devices of the mesh's model axis; 0 = all")
  relearn_steps: int = integer(50, ge=1, doc='the relearn-time cap (SGD steps on D_f)')
  relearn_lr: float = number(0.01, gt=0)
  relearn_batch_size: int = integer(64, ge=1)
  relearn_tolerance: float = number(
    0.0, ge=0, doc="points below the Original's forget accuracy that count as relearned"
  )
  bootstrap_resamples: int = integer(
    2000, ge=1, doc='resamples of the forget examples for the interval of F'
  )
  originals: str = choice(
    'per_model',
    ORIGINALS,
    doc="'per_model': run k unlearns Original k; 'one': every run unlearns the study's Original",
  )


def model_mesh(cfg: ManyModelsConfig):
  """The ('models', 'data') mesh; ConfigError unless K splits over its model devices."""
  devices = cfg.model_devices or jax.device_count()
  if devices > jax.device_count() or jax.device_count() % devices:
    raise ConfigError(
      f'--config.eval.model_devices={cfg.model_devices}: must divide the '
      f'number of devices ({jax.device_count()}).'
    )
  if cfg.num_models % devices:
    raise ConfigError(
      f'--config.eval.num_models={cfg.num_models}: must be a multiple of the '
      f'model devices ({devices}).'
    )
  return sharding_lib.make_model_mesh(devices)


def _stack(trees: list) -> Any:
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)


def _model(tree, k: int):
  return jax.tree.map(lambda x: x[k], tree)


def train_models(
  experiment: Experiment, seeds: list[int], source: str, name: str
) -> tuple[dict, float]:
  """Models trained together with the training recipe on `source` ('retain': Retrain models,
  'all': Originals), model k from seeds[k]; returns their stacked variables and the wall time."""
  states, program = [], None
  for seed in seeds:
    fns, variables = experiment.model(seed)
    program, optimizers = experiment.training_program(fns, source)
    states.append(create_state(variables, optimizers))
  t0 = time.perf_counter()
  result = run_many(
    program,
    states,
    experiment.train,
    mesh=experiment.mesh,
    seeds=seeds,
    log_every=experiment.training.log_every,
    name=name,
  )
  return jax.device_get(result.state.variables), time.perf_counter() - t0


def unlearn_models(
  experiment: Experiment,
  method: str,
  cfg: Config,
  model_fns,
  originals: list[dict],
  seeds: list[int],
  cache_dir: str = '',
) -> tuple[dict, float, dict]:
  """K runs of `method`, run k from originals[k] with seeds[k], together; returns the stacked
  unlearned variables, the wall time (preparation included, compilation too) and the plans'
  info."""
  t0 = time.perf_counter()
  plans = [
    registry.get(method).build(
      experiment.context(
        model_fns, original, seed=seed, batch_size=cfg.batch_size, cache_dir=cache_dir
      ),
      cfg,
    )
    for original, seed in zip(originals, seeds)
  ]
  result = run_many(
    plans[0].program,
    [p.state for p in plans],
    experiment.train,
    mesh=experiment.mesh,
    seeds=seeds,
    constants=[p.constants for p in plans],
    log_every=experiment.training.log_every,
    name=method,
  )
  final = jax.device_get(result.state)
  if plans[0].finalize is not None:
    variables = _stack([plans[k].finalize(_model(final, k)) for k in range(len(seeds))])
  else:
    variables = final.variables
  return variables, time.perf_counter() - t0, plans[0].info or {}


def relearn_accuracies(
  experiment: Experiment, model_fns, variables: dict, seeds: list[int], cfg: ManyModelsConfig
) -> np.ndarray:
  """Forget-set accuracy [K, relearn_steps + 1] of K models fine-tuned on D_f with SGD (before
  the first step, then after each); each model's batches follow its seed."""
  tx = make_optimizer(sgd_config(cfg.relearn_lr), cfg.relearn_steps)
  positions, weights = padded_chunks(experiment.train.sources['forget'], cfg.relearn_batch_size)
  forget_set = {'positions': jnp.asarray(positions), 'weights': jnp.asarray(weights)}

  def set_accuracy(params, batch_stats, constants, images, labels):
    def chunk(xs):
      pos, w = xs
      x = gather_images(images, experiment.info, pos)
      logits, _ = model_fns.apply({'params': params, 'batch_stats': batch_stats}, x, train=False)
      return jnp.sum((jnp.argmax(logits, -1) == jnp.take(labels, pos)) * w)

    correct = jax.lax.map(
      chunk, (constants['forget_set']['positions'], constants['forget_set']['weights'])
    )
    return 100.0 * jnp.sum(correct) / jnp.sum(constants['forget_set']['weights'])

  train_step = supervised_step(model_fns, tx)

  def relearn_step(state, batch, key, constants):
    state, metrics = train_step(state, batch, key, constants)
    accuracy = set_accuracy(
      state.params, state.batch_stats, constants, constants['images'], constants['labels']
    )
    return state, {'loss': metrics['loss'], 'forget_set_accuracy': accuracy}

  constants = {
    'forget_set': forget_set,
    'images': experiment.train.images,
    'labels': experiment.train.labels,
  }
  program = Program(
    {'relearn': StepKind(relearn_step, {'train': 'forget'})},
    ['relearn'] * cfg.relearn_steps,
    cfg.relearn_batch_size,
  )
  states = [create_state(_model(variables, k), {'main': tx}) for k in range(len(seeds))]
  before = np.stack(
    [
      np.asarray(
        jax.jit(set_accuracy)(
          s.params, s.batch_stats, constants, experiment.train.images, experiment.train.labels
        )
      )
      for s in states
    ]
  )
  result = run_many(
    program,
    states,
    experiment.train,
    mesh=experiment.mesh,
    seeds=seeds,
    constants=[constants] * len(seeds),
    log_every=10**9,
    name='relearn',
    keep_metrics=True,
  )
  after = np.stack([np.asarray(m['forget_set_accuracy']) for m in result.step_metrics], axis=1)
  return np.concatenate([before[:, None], after], axis=1)


SETS = (('forget', 'train', 'forget'), ('retain', 'train', 'retain'), ('test', 'test', 'test'))


def logits_of(experiment: Experiment, model_fns, variables: dict) -> dict[str, np.ndarray]:
  """Eval-mode logits [K, N, C] of K models on D_f, D_r and the test set."""
  return {
    name: evaluation.predict_many(
      model_fns,
      variables,
      getattr(experiment, data).images,
      experiment.info,
      getattr(experiment, data).sources[source],
      mesh=experiment.mesh,
      batch_size=experiment.evaluation.eval_batch_size,
    )
    for name, data, source in SETS
  }


def labels_of(experiment: Experiment) -> dict[str, np.ndarray]:
  return {
    name: np.asarray(getattr(experiment, data).labels)[getattr(experiment, data).sources[source]]
    for name, data, source in SETS
  }


def per_model_scores(experiment: Experiment, logits: dict, labels: dict) -> list[dict]:
  """UA, RA, TA and MIA (the study's evaluation settings) of each of the K models."""
  test_forget_mask = experiment.test_forget_mask()
  cfg = experiment.evaluation
  return [
    metrics.unlearning_metrics(
      forget_logits=logits['forget'][k],
      forget_labels=labels['forget'],
      retain_logits=logits['retain'][k],
      retain_labels=labels['retain'],
      test_logits=logits['test'][k],
      test_labels=labels['test'],
      test_forget_mask=test_forget_mask,
      mia_feature=cfg.mia_feature,
      mia_classifier=cfg.mia_classifier,
      seed=k,
    )
    for k in range(logits['forget'].shape[0])
  ]


def mean_scores(per_model: list[dict]) -> dict:
  return {k: float(np.mean([s[k] for s in per_model])) for k in ('UA', 'RA', 'TA', 'MIA')}


def scores_of(
  experiment: Experiment,
  model_fns,
  variables: dict,
  retrain: dict,
  original_forget_accuracy,
  cfg: ManyModelsConfig,
  seeds: list[int],
) -> tuple[dict, np.ndarray]:
  """The many-model scores of K models against the K Retrain models, and the per-example
  epsilons.

  Args:
    retrain: {'logits': Retrain's logits by set, 'scores': its mean single-model scores}.
    original_forget_accuracy: the relearn target, the forget accuracy of the Original each
      model comes from, [K].
  """
  logits, labels = logits_of(experiment, model_fns, variables), labels_of(experiment)
  per_model = per_model_scores(experiment, logits, labels)
  scores = mean_scores(per_model)
  scores['AvgGap'] = float(np.mean([metrics.avg_gap(s, retrain['scores']) for s in per_model]))
  scores['ToW'] = float(np.mean([metrics.tow(s, retrain['scores']) for s in per_model]))
  quality = fq.forgetting_quality(logits['forget'], retrain['logits']['forget'], labels['forget'])
  scores['F_low'], scores['F_high'] = fq.bootstrap_interval(
    quality.points, num_resamples=cfg.bootstrap_resamples
  )
  final = fq.challenge_score(
    quality,
    retain_accuracy_unlearned=scores['RA'],
    retain_accuracy_retrained=retrain['scores']['RA'],
    test_accuracy_unlearned=scores['TA'],
    test_accuracy_retrained=retrain['scores']['TA'],
  )
  klom = fq.klom_report(
    {name: (logits[name], retrain['logits'][name], labels[name]) for name in logits}
  )
  relearn = fq.relearn_summary(
    fq.relearn_time(
      relearn_accuracies(experiment, model_fns, variables, seeds, cfg),
      original_forget_accuracy,
      steps=np.arange(cfg.relearn_steps + 1),
      tolerance=cfg.relearn_tolerance,
    )
  )
  scores.update(
    F=quality.quality,
    score=final.score,
    K=quality.num_models,
    relearn_steps=relearn.mean,
    relearn_steps_std=relearn.std,
    relearn_reached=relearn.num_reached,
  )
  for name, value in klom.items():
    scores[f'KLOM_{name}_median'], scores[f'KLOM_{name}_p95'] = value.median, value.p95
  return scores, quality.epsilons


def epsilon_figure(per_example: dict[str, np.ndarray], num_models: int, title: str):
  """Per row, the share of forget examples in each epsilon bucket, as a stacked bar: the
  buckets that score at this K (width 0.5, worth 1, 1/2, ...), the rest below the cap, and the cap
  (the attacks told the two sets of models apart perfectly)."""
  figure = figures.new_figure(figsize=(9, 0.55 * len(per_example) + 2.4))
  ax = figure.subplots()
  names = list(per_example)
  limit = fq.num_score_buckets(num_models) * fq.BUCKET_WIDTH
  edges = np.arange(0.0, limit + 1e-9, fq.BUCKET_WIDTH)
  labels = [
    f'{a:g}-{b:g} (scores 1/{2**i})' if i else f'{a:g}-{b:g} (scores 1)'
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))
  ]
  labels += [
    f'{limit:g} to the cap (scores 0)',
    f'the cap, {fq.EPSILON_CAP:g} (perfectly told apart)',
  ]
  scoring = figures.colormap('viridis')(np.linspace(0.2, 0.95, len(edges) - 1))
  colours = list(scoring) + ['0.6', 'tab:red']
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
  ax.set_xlabel(f'% of forget examples by per-example epsilon (K = {num_models} models per row)')
  ax.set_title(title, fontsize=10)
  ax.legend(loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=3, fontsize=8, frameon=False)
  figure.tight_layout()
  return figure


def evaluate(study, cfg: ManyModelsConfig, results_name: str = 'many_models') -> dict:
  """The many-model evaluation of `study`'s rows (`Study.many_models`); writes
  {results_name}.json/.md/.png under {experiment_dir}/many_K{K}/ and returns the payload."""
  mesh = model_mesh(cfg)
  study.check_methods()
  k = cfg.num_models
  seeds = list(range(k))
  experiment = study.experiment.on_mesh(mesh)
  labels = labels_of(experiment)
  start = time.perf_counter()
  stacked_originals, originals_wall = train_models(experiment, seeds, 'all', 'original')
  fns = experiment.model(0)[0]
  if cfg.originals == 'per_model':
    originals = [_model(stacked_originals, i) for i in seeds]
    original_logits = logits_of(experiment, fns, stacked_originals)['forget']
  else:
    original = study.original()
    originals = [original.variables] * k
    one = study.experiment.logits(original.model_fns, original.variables)['forget']
    original_logits = np.broadcast_to(one, (k, *one.shape))
  original_fa = 100.0 * np.mean(np.argmax(original_logits, -1) == labels['forget'], axis=1)
  retrain_vars, retrain_wall = train_models(experiment, seeds, 'retain', 'retrain')
  retrain_logits = logits_of(experiment, fns, retrain_vars)
  retrain_scores = mean_scores(per_model_scores(experiment, retrain_logits, labels))
  retrain = {'logits': retrain_logits, 'scores': retrain_scores}
  relearn = fq.relearn_summary(
    fq.relearn_time(
      relearn_accuracies(experiment, fns, retrain_vars, seeds, cfg),
      original_fa,
      steps=np.arange(cfg.relearn_steps + 1),
      tolerance=cfg.relearn_tolerance,
    )
  )
  rows = {
    'Retrain': {
      **retrain_scores,
      'K': k,
      'relearn_steps': relearn.mean,
      'relearn_steps_std': relearn.std,
      'relearn_reached': relearn.num_reached,
      'wall_s': retrain_wall,
    }
  }
  per_example = {}
  control_seeds = list(range(k, 2 * k))
  control_vars, control_wall = train_models(experiment, control_seeds, 'retain', 'control')
  for row, variables, row_seeds, wall in (
    ('Control', control_vars, control_seeds, control_wall),
    ('Original', stacked_originals, seeds, originals_wall),
  ):
    rows[row], per_example[row] = scores_of(
      experiment, fns, variables, retrain, original_fa, cfg, row_seeds
    )
    rows[row]['wall_s'] = wall
    _print(row, rows[row])
  for row, method, method_cfg in study.rows:
    variables, wall, info = unlearn_models(
      experiment,
      method,
      method_cfg,
      fns,
      originals,
      seeds,
      os.path.join(study.experiment_dir, 'cache'),
    )
    rows[row], per_example[row] = scores_of(
      experiment, fns, variables, retrain, original_fa, cfg, seeds
    )
    rows[row].update(wall_s=wall, trainable_fraction=info.get('trainable_fraction', 1.0))
    _print(row, rows[row])
  title = (
    f'{study.data_config.dataset} / {study.training.model} / forget '
    f'{study.data_config.forget}: K = {k} models per row'
  )
  payload = {
    'config': study.config.to_dict(),
    'num_models': k,
    'rows': rows,
    'epsilons': {name: v.tolist() for name, v in per_example.items()},
    'originals': cfg.originals,
    'original_forget_accuracy': original_fa.tolist(),
    **report.provenance(experiment.mesh),
    'wall_seconds': time.perf_counter() - start,
  }
  if jax.process_index() == 0:
    report.write_results(
      os.path.join(study.experiment_dir, f'many_K{k}'),
      results_name,
      payload,
      title=title,
      table=report.many_model_table(rows),
      note=report.MANY_MODEL_NOTE,
      figure=epsilon_figure(per_example, k, title),
    )
  return payload


def _print(row: str, scores: dict) -> None:
  shown = ('UA', 'RA', 'TA', 'AvgGap', 'F', 'F_low', 'F_high', 'relearn_steps', 'wall_s')
  print(f'[many {row}] ' + ', '.join(f'{k} {scores[k]:.3f}' for k in shown), flush=True)
