"""Pre-training a backbone on data a study does not use, for the pre-trained recipe.

RFA-LoRA's setting is a model pre-trained elsewhere, then unlearned. `pretrain` trains the
experiment's model, by the training recipe of the config, on the training images *outside* the
stratified subset that a study with ``--config.train_subset=N`` uses (e.g. the 40,000 CIFAR-10
images outside the 10,000-image subset), and writes its weights as a `.safetensors` file of its
tree (`weight_files.save_weights`) with a JSON record beside it. A study then starts its Original
and Retrain from it with ``--config.init=PATH`` (`experiment.load_init`). The run checkpoints and
resumes like any other; a finished file is reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import numpy as np
from flax import nnx

from jaxunlearn import evaluation, files, metrics, weight_files
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.config import (
  Config,
  ConfigError,
  DataConfig,
  EvalConfig,
  TrainingConfig,
  integer,
  section_from_flat,
  text,
)
from jaxunlearn.data import load_dataset, select_train_subset
from jaxunlearn.data.device import DeviceData
from jaxunlearn.loop import run
from jaxunlearn.models import create_model, model_tag, resolve, set_compute_dtype
from jaxunlearn.state import functionalize
from jaxunlearn.train import create_state, supervised_program


@dataclasses.dataclass(frozen=True)
class PretrainConfig(Config):
  """What is pre-trained on, and where the weights go."""

  exclude_subset: int = integer(
    0,
    ge=0,
    doc='N > 0: train on the train images outside the stratified N-example subset (the '
    '--config.train_subset of the studies that start from the weights); 0: all of them',
  )
  out: str = text('', doc="the .safetensors file; '' = under workdir/pretrained/")


def complement(train_size: int, subset: np.ndarray | None) -> np.ndarray:
  """The positions of a train split outside `subset` (all of them when `subset` is None)."""
  keep = np.ones(train_size, bool)
  if subset is not None:
    keep[subset] = False
  return np.flatnonzero(keep)


def default_path(data: DataConfig, training: TrainingConfig, cfg: PretrainConfig) -> str:
  """workdir/pretrained/{dataset}-{model}-outside{N}-s0.safetensors."""
  name = os.path.basename(data.dataset.rstrip('/')) or data.dataset
  tag = f'{model_tag(name)}-{model_tag(training.model)}-outside{cfg.exclude_subset}-s0'
  return os.path.join(training.workdir, 'pretrained', f'{tag}.safetensors')


def pretrain(config, seed: int = 0) -> dict:
  """Pre-trains the config's model on the images outside its subset; returns the record.

  Args:
    config: a flat training config plus the `PretrainConfig` fields (`exclude_subset`, `out`).
    seed: the model's initialisation and batch order.

  Returns:
    {'path', 'sha256', 'test_accuracy', 'num_examples', 'run_seconds', ...}, also written as
    PATH.json; read back when the file exists already.

  Raises:
    ConfigError: a bad value (one line), before any work.
  """
  data = section_from_flat(DataConfig, config)
  training = section_from_flat(TrainingConfig, config)
  evaluation_config = section_from_flat(EvalConfig, config)
  cfg = section_from_flat(PretrainConfig, config)
  constructor = resolve(training.model)
  path = cfg.out or default_path(data, training, cfg)
  if not path.endswith('.safetensors'):
    raise ConfigError(f'--config.out={path!r}: must name a .safetensors file.')
  record_path = path + '.json'
  if os.path.exists(path) and os.path.exists(record_path):
    with open(record_path) as f:
      return json.load(f)
  mesh = sharding_lib.make_mesh(sharding_lib.select_devices(max(training.num_devices, 1)))
  dataset = load_dataset(
    data.dataset,
    data.data_dir or None,
    test_split=data.test_split,
    image_size=data.image_size,
    augment=data.augment,
  )
  info = dataset.info
  _, subset = select_train_subset(dataset.train, cfg.exclude_subset, info.num_classes)
  outside = complement(len(dataset.train), subset)
  model_kwargs = dict(config.get('model_kwargs', {}) or {})
  module = set_compute_dtype(
    create_model(
      constructor,
      num_classes=info.num_classes,
      input_shape=info.image_shape,
      rngs=nnx.Rngs(seed),
      **model_kwargs,
    ),
    training.compute_dtype,
  )
  model_fns, variables = functionalize(module)
  train = DeviceData.create(
    dataset.train.images, dataset.train.labels, info, {'all': outside}, mesh
  )
  test = DeviceData.create(
    dataset.test.images,
    dataset.test.labels,
    info,
    {'test': np.arange(len(dataset.test))},
    mesh,
  )
  program, optimizers = supervised_program(
    model_fns,
    training.optimizer,
    num_examples=len(outside),
    batch_size=training.batch_size,
    epochs=training.epochs,
    source='all',
  )
  manager = CheckpointManager(
    path + '.checkpoints',
    every_steps=training.checkpoint_every_steps,
    keep=1,
    meta={'model': training.model, 'exclude_subset': cfg.exclude_subset, 'seed': seed},
  )
  t0 = time.perf_counter()
  result = run(
    program,
    create_state(variables, optimizers),
    train,
    mesh=mesh,
    seed=seed,
    checkpointer=manager,
    augment=True,
    log_every=training.log_every,
    name='pretrain',
    stop_on_nonfinite=True,
  )
  manager.close()
  final = jax.device_get(result.state.variables)
  logits = evaluation.predict(
    model_fns,
    final,
    test.images,
    info,
    test.sources['test'],
    mesh=mesh,
    batch_size=evaluation_config.eval_batch_size,
  )
  weight_files.save_weights(model_fns.module(final), path)
  record = {
    'path': os.path.abspath(path),
    'sha256': weight_files.file_digest(path),
    'test_accuracy': metrics.accuracy(logits, np.asarray(dataset.test.labels)),
    'num_examples': int(len(outside)),
    'exclude_subset': cfg.exclude_subset,
    'dataset': data.dataset,
    'model': training.model,
    'model_kwargs': model_kwargs,
    'epochs': training.epochs,
    'seed': seed,
    'run_seconds': result.run_seconds,
    'wall_seconds': time.perf_counter() - t0,
  }
  files.write_json(record_path, record)
  with open(record_path) as f:  # as a later call reads it back (tuples become lists)
    return json.load(f)
