"""One experiment, built once from its typed config sections: the data on device, the forget split,
the mesh, the model, the training recipe of the Original and Retrain, the unlearning context and
the one evaluation path. Everything between a study and the loop asks it.

Directory layout under a workdir::

  {dataset}-{model}/original_s{seed}/                 checkpoints/, config.json, metrics.json
  {dataset}-{model}/{forget}-split{k}/                split.npz, split.json (D_f and D_r)
  {dataset}-{model}/{forget}-split{k}/retrain_s{seed}/
  {dataset}-{model}/{forget}-split{k}/runs/           the method runs (`jaxunlearn.runs`)
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxunlearn import data as data_lib
from jaxunlearn import evaluation, files, metrics, runs, weight_files
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.checkpoint import CheckpointManager, check_compatible, model_signature
from jaxunlearn.config import ConfigError, DataConfig, EvalConfig, TrainingConfig, section_from_flat
from jaxunlearn.data.device import DeviceData
from jaxunlearn.features import feature_points, layer_calls
from jaxunlearn.loop import Program, run, step_runner
from jaxunlearn.methods import UnlearnContext
from jaxunlearn.models import (
  check_model,
  create_model,
  model_name,
  model_tag,
  resolve,
  set_compute_dtype,
)
from jaxunlearn.state import ModelFns, functionalize
from jaxunlearn.train import create_state, supervised_program

REPRESENTATION_SOURCES = {'r': 'retain', 'f': 'forget'}


def forget_tag(spec: str) -> str:
  """A directory-safe name for a forget spec ('random:0.1' -> 'random-0.1')."""
  return re.sub(r'[^A-Za-z0-9.]+', '-', spec).strip('-')


def directories(
  data: DataConfig, training: TrainingConfig, dataset_name: str, init_digest: str = ''
) -> tuple[str, str]:
  """The model directory and the experiment directory of an experiment (the layout above).

  Args:
    data: the data section (its training subset, forget spec and split seed).
    training: the training section (its workdir and model).
    dataset_name: the loaded dataset's name, `DatasetInfo.name` (a built-in dataset's is its
      --config.dataset value).
    init_digest: the sha256 of the pre-trained weights the models start from ('' = none).

  Returns:
    ``{workdir}/{dataset}-{model}[-init{digest[:12]}]`` and, inside it, ``{forget}-split{k}``.
  """
  name = f'{data_lib.data_name(dataset_name, data.train_subset)}-{model_tag(training.model)}'
  model_dir = os.path.join(
    training.workdir, name + (f'-init{init_digest[:12]}' if init_digest else '')
  )
  return model_dir, os.path.join(model_dir, f'{forget_tag(data.forget)}-split{data.split_seed}')


def sections(config) -> tuple[DataConfig, TrainingConfig, EvalConfig]:
  """The validated data, training and evaluation sections of a flat experiment config; raises
  `jaxunlearn.config.ConfigError` naming the first bad value."""
  return (
    section_from_flat(DataConfig, config),
    section_from_flat(TrainingConfig, config),
    section_from_flat(EvalConfig, config),
  )


@dataclasses.dataclass
class TrainedModel:
  """An Original or Retrain model: its functions, weights and training metrics."""

  model_fns: ModelFns
  variables: dict
  scores: dict


@dataclasses.dataclass(eq=False)
class Experiment:
  """The data, split, mesh and recipes of one experiment (see `prepare`). It keeps the reference
  models it has trained or loaded, and their features, for as long as it lives."""

  data_config: DataConfig
  training: TrainingConfig
  evaluation: EvalConfig
  model_kwargs: dict
  info: data_lib.DatasetInfo
  split: data_lib.ForgetSplit
  mesh: Any
  train: DeviceData  # sources: 'all', 'forget', 'retain'
  test: DeviceData  # sources: 'test' (+ 'test_forget', 'test_retain' for class forgetting)
  experiment_dir: str
  model_dir: str
  constructor: Callable[..., nnx.Module]  # builds the model (`jaxunlearn.models.resolve`)
  feature_points: tuple  # the model's features (`jaxunlearn.features.feature_points`)
  original_file: dict | None = None  # {'path', 'sha256'} when the Original is read from a file
  init_file: dict | None = None  # {'path', 'sha256', 'layout'}: the pre-trained start, if any
  _cache: dict = dataclasses.field(default_factory=dict, init=False, repr=False)

  # --- models and recipes ------------------------------------------------------------------

  def module(self, seed: int) -> nnx.Module:
    """The experiment's model as a module, freshly initialised from `seed`."""
    model = create_model(
      self.constructor,
      num_classes=self.info.num_classes,
      input_shape=self.info.image_shape,
      rngs=nnx.Rngs(seed),
      **self.model_kwargs,
    )
    return set_compute_dtype(model, self.training.compute_dtype)

  def model(self, seed: int) -> tuple[ModelFns, dict]:
    """The experiment's model, freshly initialised from `seed`: its functions and variables."""
    return functionalize(self.module(seed), self.feature_points)

  def starting_model(self, seed: int) -> tuple[ModelFns, dict]:
    """What the Original and Retrain of `seed` train from: the fresh model, or with
    `training.init` the pre-trained weights with a fresh head drawn from `seed` (so the Original
    and Retrain of a seed start from identical weights)."""
    module = self.module(seed)
    if self.init_file is not None:
      load_init(module, self.training, self.info.image_shape, self.model_kwargs)
    return functionalize(module, self.feature_points)

  def training_program(self, model_fns: ModelFns, source: str) -> tuple[Program, dict]:
    """The training recipe on `source` ('all': the Original, 'retain': Retrain): the program and
    its optimisers."""
    training = self.training
    return supervised_program(
      model_fns,
      training.optimizer,
      num_examples=len(self.train.sources[source]),
      batch_size=training.batch_size,
      epochs=training.epochs,
      source=source,
    )

  def context(
    self, model_fns: ModelFns, original: dict, *, seed: int, batch_size: int, cache_dir: str = ''
  ) -> UnlearnContext:
    """What a method may read, for a run of `seed` at `batch_size` from `original`."""
    return UnlearnContext(
      model_fns=model_fns,
      original=original,
      data=self.train,
      num_classes=self.info.num_classes,
      batch_size=batch_size,
      seed=seed,
      mesh=self.mesh,
      init_variables=lambda init_seed: self.model(init_seed)[1],
      cache_dir=cache_dir,
      model_name=self.training.model,
    )

  def on_mesh(self, mesh) -> Experiment:
    """The experiment with its data placed on `mesh` (e.g. a ('models', 'data') one)."""

    def move(data: DeviceData) -> DeviceData:
      return DeviceData.create(
        np.asarray(data.images), np.asarray(data.labels), data.info, data.sources, mesh
      )

    return dataclasses.replace(self, mesh=mesh, train=move(self.train), test=move(self.test))

  # --- the Original and Retrain --------------------------------------------------------------

  def model_run_dir(self, kind: str, seed: int) -> str:
    """The directory of the Original ('original') or Retrain ('retrain') model of `seed`."""
    if kind == 'original' and self.original_file is not None:
      return os.path.join(self.model_dir, f'original_file-{self.original_file["sha256"][:16]}')
    if kind == 'original':
      return os.path.join(self.model_dir, f'original_s{seed}')
    return os.path.join(self.experiment_dir, f'{kind}_s{seed}')

  def is_trained(self, kind: str, seed: int) -> bool:
    if kind == 'original' and self.original_file is not None:
      return True
    return os.path.exists(os.path.join(self.model_run_dir(kind, seed), 'metrics.json'))

  def load_original(self) -> tuple[ModelFns, dict, dict]:
    """The Original read from `training.original` (no training): fns, variables and its scores
    (test accuracy, the file and its sha256; no training time)."""
    module = weight_files.load_into(self.module(0), self.training.original)
    model_fns, variables = functionalize(module, self.feature_points)
    directory = self.model_run_dir('original', 0)
    metrics_path = os.path.join(directory, 'metrics.json')
    if os.path.exists(metrics_path):
      with open(metrics_path) as f:
        return model_fns, variables, json.load(f)
    scores, _ = self.evaluate(model_fns, variables)
    scores.update(run_seconds=0.0, compile_seconds=0.0, wall_seconds=0.0, steps=0)
    scores.update(original_file=self.original_file)
    if jax.process_index() == 0:
      files.write_json(os.path.join(directory, 'config.json'), self.record())
      files.write_json(metrics_path, scores)
    return model_fns, variables, scores

  def train_model(self, kind: str, seed: int) -> tuple[ModelFns, dict, dict]:
    """Trains (or resumes, or loads when finished) the Original (`kind='original'`, all training
    data) or Retrain (`kind='retrain'`, D_r only). Returns fns, variables and metrics."""
    source = 'all' if kind == 'original' else 'retain'
    directory = self.model_run_dir(kind, seed)
    model_fns, variables = self.starting_model(seed)
    meta = {
      'model': self.training.model,
      'dataset': self.data_config.dataset,
      'kind': kind,
      'seed': seed,
      'model_signature': model_signature(variables['params']),
      'compute_dtype': self.training.compute_dtype,
    }
    if kind != 'original':
      meta['split_digest'] = self.split.digest
    check_compatible(os.path.join(directory, 'checkpoints'), meta, '--config.workdir')
    metrics_path = os.path.join(directory, 'metrics.json')
    training = self.training
    program, optimizers = self.training_program(model_fns, source)
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
        self.test.images,
        self.info,
        self.test.sources['test'],
        mesh=self.mesh,
        batch_size=self.evaluation.eval_batch_size,
      )
      return {'test_accuracy': metrics.accuracy(logits, np.asarray(self.test.labels))}

    t0 = time.perf_counter()
    result = run(
      program,
      create_state(variables, optimizers),
      self.train,
      mesh=self.mesh,
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
    scores, _ = self.evaluate(model_fns, variables, seed=seed)
    scores.update(
      run_seconds=result.run_seconds,
      compile_seconds=result.compile_seconds,
      wall_seconds=time.perf_counter() - t0,
      steps=len(program.schedule),
    )
    if jax.process_index() == 0:
      files.write_json(os.path.join(directory, 'config.json'), self.record())
      if kind != 'original':
        data_lib.save_forget_split(self.split, directory)
      files.write_json(metrics_path, scores)
    return model_fns, variables, scores

  def trained(self, kind: str, seed: int, *, no_train: bool = False) -> TrainedModel:
    """The Original or Retrain of `seed`, trained, resumed or loaded once; with `no_train`, a
    missing one is a ConfigError instead."""
    if (kind, seed) not in self._cache:
      if no_train and not self.is_trained(kind, seed):
        path = os.path.join(self.model_run_dir(kind, seed), 'metrics.json')
        raise ConfigError(
          f'--config.no_train is set but the {kind} model (seed {seed}) is missing: {path} '
          'does not exist. Train it with experiments.train, or drop no_train.'
        )
      if kind == 'original' and self.original_file is not None:
        self._cache[kind, seed] = TrainedModel(*self.load_original())
      else:
        self._cache[kind, seed] = TrainedModel(*self.train_model(kind, seed))
    return self._cache[kind, seed]

  def retrain_reference(self, seed: int) -> tuple[dict, dict]:
    """Retrain's scores and logits at `seed`: what every row of the seed is compared with."""
    key = ('reference', seed)
    if key not in self._cache:
      retrain = self.trained('retrain', seed)
      scores, logits = self.evaluate(retrain.model_fns, retrain.variables, seed=seed)
      scores.update(RTE_s=retrain.scores['run_seconds'], KL=0.0, AvgGap=0.0, ToW=1.0)
      self._cache[key] = scores, logits
    return self._cache[key]

  def representation(self, variables: dict, *, original_seed: int, seed: int) -> dict:
    """FD and CKA of a model against the Original of `original_seed` (and CKA against Retrain
    of `seed`), see `representation_scores`."""
    original = self.trained('original', original_seed)
    references = {}
    for name, model_seed in (('original', original_seed), ('retrain', seed)):
      key = ('penultimate', name, model_seed)
      if key not in self._cache:
        model = self.trained(name, model_seed)
        self._cache[key] = self.penultimate_features(model.model_fns, model.variables)
      references[name] = self._cache[key]
    return self.representation_scores(original.model_fns, variables, original.variables, references)

  def record(self) -> dict:
    """The experiment's settings, as written beside its models."""
    return {
      'data': dataclasses.asdict(self.data_config),
      'training': dataclasses.asdict(self.training),
      'evaluation': dataclasses.asdict(self.evaluation),
      'model_kwargs': self.model_kwargs,
      'features': [dataclasses.asdict(p) for p in self.feature_points],
      'original_file': self.original_file,
      'init_file': self.init_file,
      'devices': [f'{d.platform}:{d.id}' for d in self.mesh.devices.flat],
    }

  # --- evaluation ----------------------------------------------------------------------------

  def logits(self, model_fns: ModelFns, variables: dict) -> dict[str, np.ndarray]:
    """Eval-mode logits on D_f, D_r and the test set (and its class parts)."""
    size = self.evaluation.eval_batch_size
    out = evaluation.logits_on_sources(
      model_fns, variables, self.train, mesh=self.mesh, batch_size=size
    )
    out.update(
      evaluation.logits_on_sources(model_fns, variables, self.test, mesh=self.mesh, batch_size=size)
    )
    return out

  @property
  def class_wise(self) -> bool:
    """Whether whole classes are forgotten (tables then show TA per class part)."""
    return self.split.test_forget is not None

  def test_forget_mask(self) -> np.ndarray | None:
    """Over the test set, the examples of the forgotten classes (None unless class forgetting)."""
    if self.split.test_forget is None:
      return None
    mask = np.zeros(len(self.test.labels), bool)
    mask[self.split.test_forget] = True
    return mask

  def evaluate(self, model_fns: ModelFns, variables: dict, *, seed: int = 0):
    """The unlearning metrics of a model (UA, FA, RA, TA, MIA, per-class TA) and its logits."""
    logits = self.logits(model_fns, variables)
    train_labels = np.asarray(self.train.labels)
    cfg = self.evaluation
    result = metrics.unlearning_metrics(
      forget_logits=logits['forget'],
      forget_labels=train_labels[self.split.forget],
      retain_logits=logits['retain'],
      retain_labels=train_labels[self.split.retain],
      test_logits=logits['test'],
      test_labels=np.asarray(self.test.labels),
      test_forget_mask=self.test_forget_mask(),
      mia_feature=cfg.mia_feature,
      mia_classifier=cfg.mia_classifier,
      seed=seed,
    )
    return result, logits

  def _features(self, model_fns, variables, reference, source):
    return evaluation.feature_distances(
      model_fns,
      variables,
      model_fns,
      reference,
      self.train.images,
      self.info,
      self.train.sources[source],
      mesh=self.mesh,
      batch_size=self.evaluation.eval_batch_size,
    )

  def penultimate_features(self, model_fns: ModelFns, variables: dict) -> dict:
    """A model's penultimate features on D_r and D_f: {'retain': [N_r, D], 'forget': [N_f, D]}."""
    return {
      source: self._features(model_fns, variables, variables, source)[1]
      for source in REPRESENTATION_SOURCES.values()
    }

  def representation_scores(
    self, model_fns: ModelFns, variables: dict, original: dict, references: dict[str, dict]
  ) -> dict:
    """How far a model's representations are from the Original's, on D_r (suffix _r) and D_f
    (_f).

    FD: feature distance to the Original (the RFA-LoRA paper's "activation distance"; per
    example the L2 norm of the flattened difference, averaged over examples), per layer
    ('FD_r/conv1', ...) and averaged over the layers ('FD_r'). CKA_{name}: linear CKA between the
    model's penultimate features and those of each reference model in `references`
    ({name: penultimate_features}).
    """
    scores = {}
    for suffix, source in REPRESENTATION_SOURCES.items():
      distances, penultimate = self._features(model_fns, variables, original, source)
      per_layer = {layer: float(np.mean(d)) for layer, d in distances.items()}
      scores[f'FD_{suffix}'] = float(np.mean(list(per_layer.values())))
      scores.update({f'FD_{suffix}/{layer}': v for layer, v in per_layer.items()})
      for name, features in references.items():
        scores[f'CKA_{name}_{suffix}'] = metrics.linear_cka(penultimate, features[source])
    return scores


def prepare(config, model: Callable[..., nnx.Module] | None = None) -> Experiment:
  """Validates the config's sections, loads the data, makes the split and the mesh, and writes
  the split file; raises `ConfigError` (one line) on a bad value before any of it. On CPU with
  `num_devices=-1` the mesh is one device or all of them, as `probe_cpu_layout` finds faster.

  Args:
    config: a flat experiment config (`training_config` or `study_config`).
    model: a model class or factory, in place of `config.model` (which names it otherwise).

  Returns:
    The experiment. Before anything is written, the model is built and checked against the
    contract (`models.check_model`), its feature points resolved (`--config.features`) and a
    given Original's file checked leaf by leaf against it.
  """
  data_config, training, evaluation_config = sections(config)
  constructor = resolve(model if model is not None else training.model)
  training = training.replace(model=model_name(model if model is not None else training.model))
  runs.check_workdir(training.workdir)
  devices = sharding_lib.select_devices(training.num_devices)
  probe = False
  if training.num_devices == -1 and jax.default_backend() == 'cpu' and jax.process_count() == 1:
    # One device unless the batch can split over all of them; then the probe decides.
    probe = len(devices) > 1 and training.batch_size % len(devices) == 0
    devices = devices if probe else devices[:1]
  mesh = sharding_lib.make_mesh(devices)
  sharding_lib.check_batch_size(training.batch_size, mesh)
  dataset = data_lib.load_dataset(
    data_config.dataset,
    data_config.data_dir or None,
    test_split=data_config.test_split,
    image_size=data_config.image_size,
    augment=data_config.augment,
  )
  info, test = dataset.info, dataset.test
  model_kwargs = dict(config.get('model_kwargs', {}) or {})
  # Fails fast on a bad model, feature spec or Original file, before the split is written.
  probe_model = create_model(
    constructor,
    num_classes=info.num_classes,
    input_shape=info.image_shape,
    rngs=nnx.Rngs(0),
    **model_kwargs,
  )
  check_model(probe_model, info.num_classes, info.image_shape, training.model)
  points = feature_points(probe_model, info.image_shape, training.features)
  init_file = None
  if training.init:
    load_init(probe_model, training, info.image_shape, model_kwargs)
    init_file = {
      'path': os.path.abspath(training.init),
      'sha256': weight_files.file_digest(training.init),
      'layout': training.init_layout,
    }
  original_file = None
  if training.original:
    weight_files.load_into(probe_model, training.original)
    original_file = {
      'path': os.path.abspath(training.original),
      'sha256': weight_files.file_digest(training.original),
    }
  train, subset = data_lib.select_train_subset(
    dataset.train, data_config.train_subset, info.num_classes
  )
  split = data_lib.make_forget_split(
    data_config.forget, data_config.split_seed, train, test, info, subset=subset
  )
  model_dir, experiment_dir = directories(
    data_config, training, info.name, init_file['sha256'] if init_file else ''
  )
  existing = data_lib.load_forget_split(experiment_dir)
  if existing is not None and existing.digest != split.digest:
    raise ValueError(
      f'--config.forget={data_config.forget!r}: {experiment_dir} holds a different split '
      f'(digest {existing.digest[:12]} vs {split.digest[:12]}).'
    )
  train_sources = {
    'all': np.arange(len(train.labels)),
    'forget': split.forget,
    'retain': split.retain,
  }
  test_sources = {'test': np.arange(len(test.labels))}
  if split.test_forget is not None:
    test_sources.update(test_forget=split.test_forget, test_retain=split.test_retain)
  experiment = Experiment(
    data_config=data_config,
    training=training,
    evaluation=evaluation_config,
    model_kwargs=model_kwargs,
    info=info,
    split=split,
    mesh=mesh,
    train=DeviceData.create(train.images, train.labels, info, train_sources, mesh),
    test=DeviceData.create(test.images, test.labels, info, test_sources, mesh),
    experiment_dir=experiment_dir,
    model_dir=model_dir,
    constructor=constructor,
    feature_points=points,
    original_file=original_file,
    init_file=init_file,
  )
  if probe:
    experiment = probe_cpu_layout(experiment)
  if jax.process_index() == 0:
    data_lib.save_forget_split(split, experiment_dir)
  return experiment


def load_init(module: nnx.Module, training: TrainingConfig, image_shape, model_kwargs: dict):
  """Fills `module`'s body (every weight but its head's) with the pre-trained weights of
  `training.init`, in place; the head keeps its fresh initialisation.

  Raises:
    ConfigError: a file that does not read or does not fit the model's body (every leaf named).
  """
  if training.init_layout:
    found = weight_files.public_layout_weights(
      training.init, training.init_layout, image_shape, model_kwargs
    )
  else:
    found = weight_files.read_weights(training.init, '--config.init')
  calls, _ = layer_calls(module, image_shape)
  head = '.'.join(map(str, calls[-1][0]))
  return weight_files.load_body_into(module, found, head, where=training.init)


def probe_cpu_layout(experiment: Experiment) -> Experiment:
  """The experiment on one CPU device or data parallel over all of its CPU devices (one per
  core under the binaries), whichever runs the Original's training step faster.

  The two are timed on the actual step (model, batch size, augmentation) in interleaved rounds
  (`sharding.fastest`, about 3 s on 2 cores); the choice is cached per machine and step
  (`sharding.layout_cache_path`; delete the file to probe again) and printed. Scores do not
  depend on the choice beyond float summation order (tests/test_loop.py).
  """
  devices = list(experiment.mesh.devices.flat)
  training = experiment.training
  key = {
    **sharding_lib.machine_key(),
    'dataset': experiment.data_config.dataset,
    'image_shape': list(experiment.info.image_shape),
    'augment': experiment.data_config.augment,
    'model': training.model,
    'model_kwargs': experiment.model_kwargs,
    'batch_size': training.batch_size,
    'compute_dtype': training.compute_dtype,
  }
  one, every = '1 device', f'{len(devices)} devices'

  def placed(choice: str) -> Experiment:  # the experiment is already on every device
    return experiment.on_mesh(sharding_lib.make_mesh(devices[:1])) if choice == one else experiment

  record = sharding_lib.cached_layout(key)
  if record is None or record.get('choice') not in (one, every):
    by_layout = {name: placed(name) for name in (one, every)}
    runners = {}
    for name, placed_experiment in by_layout.items():
      model_fns, variables = placed_experiment.model(0)
      program, optimizers = placed_experiment.training_program(model_fns, 'all')
      runners[name] = step_runner(
        program,
        create_state(variables, optimizers),
        placed_experiment.train,
        mesh=placed_experiment.mesh,
        seed=0,
      )
    choice, seconds = sharding_lib.fastest(runners)
    record = {'choice': choice, 'seconds_per_step': seconds}
    sharding_lib.store_layout(key, record)
    timings = ', '.join(f'{name} {s * 1e3:.1f} ms' for name, s in seconds.items())
    print(f'CPU layout: {choice} (training step: {timings}; cached)', flush=True)
    return by_layout[choice]
  return placed(record['choice'])
