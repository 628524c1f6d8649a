"""One experiment's data, split, mesh and run directories; the training and evaluation recipes that
`experiments/train.py` and `experiments/unlearn.py` share.

Directory layout under a workdir::

  {dataset}-{model}/original_s{seed}/            checkpoints/, config.json, metrics.json
  {dataset}-{model}/{forget}-split{k}/           split.npz, split.json (D_f, D_r; identical for all runs)
  {dataset}-{model}/{forget}-split{k}/retrain_s{seed}/
  {dataset}-{model}/{forget}-split{k}/{method}_s{seed}/
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxunlearn import data as data_lib
from jaxunlearn import evaluation, metrics
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.checkpoint import CheckpointManager, check_compatible, model_signature
from jaxunlearn.config import ConfigError, DataConfig, EvalConfig, TrainingConfig, section_from_flat
from jaxunlearn.data.device import DeviceData
from jaxunlearn.loop import run
from jaxunlearn.models import create_model, set_compute_dtype
from jaxunlearn.state import ModelFns, functionalize
from jaxunlearn.train import create_state, supervised_program


@dataclasses.dataclass
class Setup:
  """Everything an experiment needs, validated before any training starts."""

  config: Any
  data_config: DataConfig
  training: TrainingConfig
  evaluation: EvalConfig
  info: data_lib.DatasetInfo
  split: data_lib.ForgetSplit
  mesh: Any
  train: DeviceData  # sources: 'all', 'forget', 'retain'
  test: DeviceData  # sources: 'test' (+ 'test_forget', 'test_retain' for class forgetting)
  experiment_dir: str
  model_dir: str


def forget_tag(spec: str) -> str:
  """A directory-safe name for a forget spec ('random:0.1' -> 'random-0.1')."""
  return re.sub(r'[^A-Za-z0-9.]+', '-', spec).strip('-')


def build_model(config, info: data_lib.DatasetInfo, seed: int) -> tuple[ModelFns, dict]:
  model = create_model(
    config.model,
    num_classes=info.num_classes,
    input_shape=info.image_shape,
    rngs=nnx.Rngs(seed),
    **dict(config.get('model_kwargs', {}) or {}),
  )
  return functionalize(set_compute_dtype(model, config.get('compute_dtype', 'float32')))


def sections(config) -> tuple[DataConfig, TrainingConfig, EvalConfig]:
  """The validated data, training and evaluation sections of a flat experiment config; raises
  `jaxunlearn.config.ConfigError` naming the first bad value."""
  return (
    section_from_flat(DataConfig, config),
    section_from_flat(TrainingConfig, config),
    section_from_flat(EvalConfig, config),
  )


MIN_FREE_BYTES = 100 * 2**20


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


def prepare(config) -> Setup:
  """Validates the config, loads the data, makes the split and the mesh, writes the split file."""
  data_config, training, evaluation_config = sections(config)
  check_workdir(training.workdir)
  mesh = sharding_lib.make_mesh(sharding_lib.select_devices(config.get('num_devices', 0)))
  sharding_lib.check_batch_size(config.batch_size, mesh)
  dataset = data_lib.load_dataset(
    config.dataset,
    config.get('data_dir') or None,
    test_split=config.get('test_split', 'test'),
    image_size=config.get('image_size', ''),
    augment=config.get('augment', 'auto'),
  )
  info, test = dataset.info, dataset.test
  build_model(config, info, 0)  # fails fast on an unknown model or model kwargs
  train_subset = config.get('train_subset', 0)
  train, subset = data_lib.select_train_subset(dataset.train, train_subset, info.num_classes)
  split = data_lib.make_forget_split(
    config.forget, config.split_seed, train, test, info, subset=subset
  )
  model_dir = os.path.join(
    config.workdir, f'{data_lib.data_name(info.name, train_subset)}-{config.model}'
  )
  experiment_dir = os.path.join(model_dir, f'{forget_tag(config.forget)}-split{config.split_seed}')
  existing = data_lib.load_forget_split(experiment_dir)
  if existing is not None and existing.digest != split.digest:
    raise ValueError(
      f'--config.forget={config.forget!r}: {experiment_dir} holds a different split '
      f'(digest {existing.digest[:12]} vs {split.digest[:12]}).'
    )
  if jax.process_index() == 0:
    data_lib.save_forget_split(split, experiment_dir)
  train_sources = {
    'all': np.arange(len(train.labels)),
    'forget': split.forget,
    'retain': split.retain,
  }
  test_sources = {'test': np.arange(len(test.labels))}
  if split.test_forget is not None:
    test_sources.update(test_forget=split.test_forget, test_retain=split.test_retain)
  return Setup(
    config=config,
    data_config=data_config,
    training=training,
    evaluation=evaluation_config,
    info=info,
    split=split,
    mesh=mesh,
    train=DeviceData.create(train.images, train.labels, info, train_sources, mesh),
    test=DeviceData.create(test.images, test.labels, info, test_sources, mesh),
    experiment_dir=experiment_dir,
    model_dir=model_dir,
  )


def run_dir(setup: Setup, kind: str, seed: int) -> str:
  if kind == 'original':
    return os.path.join(setup.model_dir, f'original_s{seed}')
  return os.path.join(setup.experiment_dir, f'{kind}_s{seed}')


def write_json(path: str, payload: Any) -> None:
  """Writes JSON atomically (temporary file, then rename)."""
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  with os.fdopen(fd, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=_json_default)
  os.chmod(tmp, 0o644)  # mkstemp creates 0600
  os.replace(tmp, path)


def _json_default(obj):
  if isinstance(obj, (np.floating, np.integer)):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  raise TypeError(f'not JSON serialisable: {type(obj)}')


def all_logits(setup: Setup, model_fns: ModelFns, variables: dict) -> dict[str, np.ndarray]:
  """Eval-mode logits on D_f, D_r and the test set (and its class parts)."""
  bs = setup.evaluation.eval_batch_size
  out = evaluation.logits_on_sources(
    model_fns, variables, setup.train, mesh=setup.mesh, batch_size=bs
  )
  out.update(
    evaluation.logits_on_sources(model_fns, variables, setup.test, mesh=setup.mesh, batch_size=bs)
  )
  return out


def evaluate(setup: Setup, model_fns: ModelFns, variables: dict, *, seed: int = 0):
  """The unlearning metrics of a model (UA, FA, RA, TA, MIA, per-class TA) and its logits."""
  logits = all_logits(setup, model_fns, variables)
  train_labels = np.asarray(setup.train.labels)
  test_labels = np.asarray(setup.test.labels)
  test_forget_mask = None
  if setup.split.test_forget is not None:
    test_forget_mask = np.zeros(len(test_labels), bool)
    test_forget_mask[setup.split.test_forget] = True
  cfg = setup.evaluation
  result = metrics.unlearning_metrics(
    forget_logits=logits['forget'],
    forget_labels=train_labels[setup.split.forget],
    retain_logits=logits['retain'],
    retain_labels=train_labels[setup.split.retain],
    test_logits=logits['test'],
    test_labels=test_labels,
    test_forget_mask=test_forget_mask,
    mia_feature=cfg.mia_feature,
    mia_classifier=cfg.mia_classifier,
    seed=seed,
  )
  return result, logits


REPRESENTATION_SOURCES = {'r': 'retain', 'f': 'forget'}


def penultimate_features(setup: Setup, model_fns: ModelFns, variables: dict) -> dict:
  """A model's penultimate features on D_r and D_f: {'retain': [N_r, D], 'forget': [N_f, D]}."""
  return {
    source: evaluation.feature_distances(
      model_fns,
      variables,
      model_fns,
      variables,
      setup.train.images,
      setup.info,
      setup.train.sources[source],
      mesh=setup.mesh,
      batch_size=setup.evaluation.eval_batch_size,
    )[1]
    for source in REPRESENTATION_SOURCES.values()
  }


def representation_scores(
  setup: Setup, model_fns: ModelFns, variables: dict, original: dict, references: dict[str, dict]
) -> dict:
  """How far a model's representations are from the Original's, on D_r (suffix _r) and D_f (_f).

  FD: feature distance to the Original (the RFA-LoRA paper's "activation distance"; per example
  the L2 norm of the flattened difference, averaged over examples), per layer ('FD_r/conv1', ...)
  and averaged over the layers ('FD_r'). CKA_{name}: linear CKA between the model's penultimate
  features and those of each reference model in `references` ({name: penultimate_features}).
  """
  scores = {}
  for suffix, source in REPRESENTATION_SOURCES.items():
    distances, penultimate = evaluation.feature_distances(
      model_fns,
      variables,
      model_fns,
      original,
      setup.train.images,
      setup.info,
      setup.train.sources[source],
      mesh=setup.mesh,
      batch_size=setup.evaluation.eval_batch_size,
    )
    per_layer = {layer: float(np.mean(d)) for layer, d in distances.items()}
    scores[f'FD_{suffix}'] = float(np.mean(list(per_layer.values())))
    scores.update({f'FD_{suffix}/{layer}': v for layer, v in per_layer.items()})
    for name, features in references.items():
      scores[f'CKA_{name}_{suffix}'] = metrics.linear_cka(penultimate, features[source])
  return scores


def train_model(setup: Setup, *, kind: str, seed: int) -> tuple[ModelFns, dict, dict]:
  """Trains (or resumes, or loads when finished) the original (`kind='original'`, all training
  data) or the retrained model (`kind='retrain'`, D_r only). Returns fns, variables, metrics."""
  cfg = setup.config
  source = 'all' if kind == 'original' else 'retain'
  directory = run_dir(setup, kind, seed)
  model_fns, variables = build_model(cfg, setup.info, seed)
  meta = {
    'model': cfg.model,
    'dataset': cfg.dataset,
    'kind': kind,
    'seed': seed,
    'model_signature': model_signature(variables['params']),
    'compute_dtype': cfg.get('compute_dtype', 'float32'),
  }
  if kind != 'original':
    meta['split_digest'] = setup.split.digest
  check_compatible(os.path.join(directory, 'checkpoints'), meta, '--config.workdir')
  metrics_path = os.path.join(directory, 'metrics.json')
  training = setup.training
  program, optimizers = supervised_program(
    model_fns,
    training.optimizer,
    num_examples=len(setup.train.sources[source]),
    batch_size=training.batch_size,
    epochs=training.epochs,
    source=source,
  )
  state = create_state(variables, optimizers)
  manager = CheckpointManager(
    os.path.join(directory, 'checkpoints'),
    every_steps=training.checkpoint_every_steps,
    keep=training.keep_checkpoints,
    best_metric=training.best_metric or None,
    meta=meta,
  )
  finished = manager.latest_step() == len(program.schedule) and os.path.exists(metrics_path)

  def eval_fn(state):
    logits = evaluation.predict(
      model_fns,
      state.variables,
      setup.test.images,
      setup.info,
      setup.test.sources['test'],
      mesh=setup.mesh,
      batch_size=setup.evaluation.eval_batch_size,
    )
    return {'test_accuracy': metrics.accuracy(logits, np.asarray(setup.test.labels))}

  t0 = time.perf_counter()
  result = run(
    program,
    state,
    setup.train,
    mesh=setup.mesh,
    seed=seed,
    checkpointer=manager,
    augment=True,
    log_every=training.log_every,
    eval_fn=eval_fn,
    name=kind,
    stop_on_nonfinite=True,
  )
  manager.close()
  variables = jax.device_get(result.state.variables)
  if finished:
    with open(metrics_path) as f:
      return model_fns, variables, json.load(f)
  scores, _ = evaluate(setup, model_fns, variables, seed=seed)
  scores.update(
    run_seconds=result.run_seconds,
    compile_seconds=result.compile_seconds,
    wall_seconds=time.perf_counter() - t0,
    steps=len(program.schedule),
  )
  if jax.process_index() == 0:
    write_json(os.path.join(directory, 'config.json'), cfg.to_dict())
    if kind != 'original':
      data_lib.save_forget_split(setup.split, directory)
    write_json(metrics_path, scores)
  return model_fns, variables, scores
