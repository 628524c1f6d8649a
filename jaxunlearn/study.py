"""The public API: a study, from a config to a table, with every run saved and reused.

    import jaxunlearn as ju
    study = ju.Study(ju.study_config(dataset='digits', forget='class:3', methods='ft,salun'))
    study.run()
    print(study.table())

A `Study` validates its whole config when it is made (every bad value is one `ConfigError` line,
before any data is built). Its runs are: the Original (trained once), Retrain (one per seed) and one
row per method or variant and seed. Each row's run writes its scores, and a method's unlearned
weights (Orbax), into its own directory ``{experiment_dir}/runs/{row}_s{seed}/`` together with a
fingerprint of everything that determines it (method and config, the Original's and Retrain's
weights, the split, the seed, dataset, model and evaluation settings). Running the same study again
reuses every completed run whose fingerprint matches and runs only the rest; long method runs
checkpoint and resume mid-run. ``results.json``, ``.md`` and ``.png`` are rebuilt from the run
directories, so a partial study can be tabulated at any time (`Study.results`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import platform
import shutil
import socket
import time
from importlib import metadata
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from jaxunlearn import benchmarking, experiment, report
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.checkpoint import CheckpointManager, read_meta
from jaxunlearn.config import (
  Config,
  ConfigError,
  DataConfig,
  EvalConfig,
  TrainingConfig,
  choice,
  flag,
  flat_defaults,
  from_config_dict,
  integer,
  section_from_flat,
  text,
  to_config_dict,
)
from jaxunlearn.methods import registry
from jaxunlearn.unlearn import (
  MethodResult,
  add_reference_scores,
  parse_seeds,
  run_method,
  summarise,
)

RERUN = ('missing', 'all')
RUN_FORMAT = 2  # bump when what a run's scores mean changes: every run is redone
_PACKAGES = (
  'jax',
  'jaxlib',
  'flax',
  'optax',
  'orbax-checkpoint',
  'tensorflow-datasets',
  'scikit-learn',
  'numpy',
)


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


def study_config(preset: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """The main job's config: an experiment plus the study's rows and every method's settings.

  Args:
    preset: a method preset (e.g. 'cifar10_resnet18') for the methods that have it.
    **overrides: values to set; nested keys with '__' or '.' inside a dict key, e.g.
      ``study_config(**{'method.ft.epochs': 2})`` or ``study_config(epochs=3)``.

  Returns:
    An unlocked ConfigDict.
  """
  c = training_config()
  c.update(to_config_dict(StudyConfig()))
  c.method = registry.config_dicts(preset)
  for key, value in overrides.items():
    _set(c, key.replace('__', '.'), value)
  return c


def _set(config, dotted: str, value) -> None:
  *parents, leaf = dotted.split('.')
  node = config
  for part in parents:
    node = node[part]
  node[leaf] = value


def validate(config) -> tuple:
  """Every section of a study config, validated: (data, training, eval, study, distributed,
  rows). Raises `ConfigError`, one line naming the flag and what is allowed."""
  data, training, evaluation = experiment.sections(config)
  study = section_from_flat(StudyConfig, config)
  dist = _distributed(config)
  parse_seeds(study.seeds)
  rows = method_rows(config, study.methods) if 'method' in config else []
  return data, training, evaluation, study, dist, rows


def _distributed(config) -> DistributedConfig:
  return from_config_dict(DistributedConfig, config.get('distributed', {}), '--config.distributed')


def method_rows(config, methods: str) -> list[tuple[str, str, Config]]:
  """(row, method, validated config) of every run `methods` asks for; a group name runs its
  variants, each a row."""
  rows = []
  for name in registry.parse_methods(methods):
    if name in registry.groups():
      method = registry.groups()[name]
      base = registry.parse_config(method.name, config.method[method.name])
      for row, variant in method.groups[name](base).items():
        rows.append(
          (
            row,
            method.name,
            registry.parse_config(method.name, variant, f'--config.method.{method.name} ({row})'),
          )
        )
    else:
      rows.append((name, name, registry.parse_config(name, config.method[name])))
  return rows


@dataclasses.dataclass
class TrainedModel:
  """A model of the study: its functions, weights and scores."""

  model_fns: Any
  variables: dict
  scores: dict


class Study:
  """One unlearning study (see the module docstring).

  Args:
    config: a `study_config` ConfigDict (possibly overridden by flags); a `training_config` one
      (no methods) serves to train the Original and Retrain models alone.
    rows: (row name, method, its config) of every row, in place of those `config.methods` names
      (e.g. one row per trial of a tuning grid); each config is validated.
  """

  def __init__(self, config, rows: list[tuple[str, str, Any]] | None = None):
    (
      self.data_config,
      self.training,
      self.evaluation,
      self.options,
      self.distributed,
      self.rows,
    ) = validate(config)
    if rows is not None:
      self.rows = [
        (row, method, registry.parse_config(method, cfg, f'--config.method.{method} ({row})'))
        for row, method, cfg in rows
      ]
    self.config = config
    self.seeds = parse_seeds(self.options.seeds)
    self.wall_seconds = 0.0
    self._done = set()  # fingerprints of the runs completed by this object

  @functools.cached_property
  def setup(self) -> experiment.Setup:
    """The data on device, the split and the mesh (built on first use)."""
    dist = self.distributed
    sharding_lib.maybe_initialize_distributed(
      dist.coordinator_address or None, dist.num_processes or None, dist.process_id
    )
    return experiment.prepare(self.config)

  @property
  def experiment_dir(self) -> str:
    return self.setup.experiment_dir

  def run_dir(self, method: str, seed: int, fingerprint: str) -> str:
    """A run's directory, named by what it runs: rows with the same method, config and seed
    (e.g. 'sfron' and the ablation's all-on 'sfron-SFR') share one run."""
    return os.path.join(self.experiment_dir, 'runs', f'{method}_s{seed}_{fingerprint[:16]}')

  def _row_run(self, row: str, seed: int) -> tuple[str, str, Config | None]:
    """(method, fingerprint, config) of `row` at `seed`; Original and Retrain are their own
    'method'."""
    if row in ('Original', 'Retrain'):
      return row, self.fingerprint(row, None, seed), None
    method, cfg = {r: (m, c) for r, m, c in self.rows}[row]
    return method, self.fingerprint(method, cfg, seed), cfg

  # --- the reference models --------------------------------------------------------------------

  def _require_trained(self, kind: str, seed: int) -> None:
    path = os.path.join(experiment.run_dir(self.setup, kind, seed), 'metrics.json')
    if self.options.no_train and not os.path.exists(path):
      raise ConfigError(
        f'--config.no_train is set but the {kind} model (seed {seed}) is missing: '
        f'{path} does not exist. Train it with experiments.train, or drop '
        'no_train.'
      )

  @functools.cache
  def original(self, seed: int | None = None) -> TrainedModel:
    """The Original model of `seed` (default: the study's original_seed), trained, resumed or
    loaded."""
    seed = self.options.original_seed if seed is None else seed
    self._require_trained('original', seed)
    fns, variables, scores = experiment.train_model(self.setup, kind='original', seed=seed)
    return TrainedModel(fns, variables, scores)

  @functools.cache
  def retrain(self, seed: int) -> TrainedModel:
    """Retrain of `seed` (trained, resumed or loaded); its scores are its training metrics."""
    self._require_trained('retrain', seed)
    fns, variables, scores = experiment.train_model(self.setup, kind='retrain', seed=seed)
    return TrainedModel(fns, variables, scores)

  @functools.cache
  def _reference(self, seed: int) -> tuple[dict, dict]:
    """Retrain's evaluation scores and logits at `seed` (what every row of the seed is compared
    with)."""
    retrain = self.retrain(seed)
    scores, logits = experiment.evaluate(
      self.setup, retrain.model_fns, retrain.variables, seed=seed
    )
    scores.update(RTE_s=retrain.scores['run_seconds'], KL=0.0, AvgGap=0.0, ToW=1.0)
    return scores, logits

  @functools.cache
  def _penultimate(self, kind: str, seed: int) -> dict:
    model = self.original() if kind == 'Original' else self.retrain(seed)
    return experiment.penultimate_features(self.setup, model.model_fns, model.variables)

  def representation(self, variables: dict, seed: int) -> dict:
    """FD and CKA of a model against the Original (and CKA against Retrain of `seed`)."""
    original = self.original()
    return experiment.representation_scores(
      self.setup,
      original.model_fns,
      variables,
      original.variables,
      {
        'original': self._penultimate('Original', self.options.original_seed),
        'retrain': self._penultimate('Retrain', seed),
      },
    )

  @functools.cache
  def _fingerprint_base(self, seed: int) -> dict:
    base = {
      'format': RUN_FORMAT,
      'dataset': self.data_config.dataset,
      'split': self.setup.split.digest,
      'model': self.training.model,
      'model_kwargs': self.config.model_kwargs.to_dict(),
      'evaluation': dataclasses.asdict(self.evaluation),
      'seed': seed,
      'original': weights_digest(self.original().variables),
      'retrain': weights_digest(self.retrain(seed).variables),
    }
    if self.training.compute_dtype != 'float32':  # float32 runs keep their earlier fingerprints
      base['compute_dtype'] = self.training.compute_dtype
    return base

  def fingerprint(self, method: str, cfg: Config | None, seed: int) -> str:
    """A digest of everything that determines the run of `method` with `cfg` at `seed`."""
    payload = {
      **self._fingerprint_base(seed),
      'method': method,
      'config': dataclasses.asdict(cfg) if cfg is not None else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

  # --- rows --------------------------------------------------------------------------------------

  def run(self) -> dict:
    """Runs (or reuses) every row and seed of the config, writes the results files and returns
    the results payload."""
    if self.options.only_report:
      return self.write_results()
    start = time.perf_counter()
    self.check_methods()
    with self._lock():
      for seed in self.seeds:
        self.reference_rows(seed)
        for row, method, cfg in self.rows:
          self.run_row(row, method, cfg, seed)
      self.wall_seconds += time.perf_counter() - start
      return self.write_results()

  def check_methods(self) -> None:
    """The checks of every row's config that need the model (e.g. RFA-LoRA's layer names), on a
    freshly initialised model, before any training."""
    fns, variables = experiment.build_model(self.config, self.setup.info, 0)
    for _, method, cfg in self.rows:
      check = registry.get(method).check
      if check is not None:
        check(cfg, fns, variables, self.training.model, self.setup.info.image_shape)

  def reference_rows(self, seed: int) -> None:
    """The Original and Retrain rows of `seed` (scored against Retrain)."""
    for row in ('Original', 'Retrain'):
      _, fingerprint, _ = self._row_run(row, seed)
      if self._completed(row, seed, fingerprint) is not None:
        continue
      retrain_scores, retrain_logits = self._reference(seed)
      if row == 'Retrain':
        scores = dict(retrain_scores)
        variables = self.retrain(seed).variables
      else:
        original = self.original()
        variables = original.variables
        scores, logits = experiment.evaluate(
          self.setup, original.model_fns, original.variables, seed=seed
        )
        scores['RTE_s'] = original.scores['run_seconds']
        add_reference_scores(scores, logits, retrain_scores, retrain_logits)
      scores.update(self.representation(variables, seed))
      self._save_run(row, seed, fingerprint, row, scores, None)

  def run_row(self, row: str, method: str, cfg: Config, seed: int) -> dict:
    """The scores of `row` (method `method` with `cfg`) at `seed`: read from its run directory
    when a completed run with the same fingerprint is there, else run (resuming from a
    checkpoint of an interrupted run)."""
    fingerprint = self.fingerprint(method, cfg, seed)
    done = self._completed(method, seed, fingerprint)
    directory = self.run_dir(method, seed, fingerprint)
    if done is not None:
      print(f'[{row} s{seed}] reused {directory}', flush=True)
      return done
    manager = self._run_checkpointer(directory, fingerprint)
    prior = manager.prior_seconds() if manager else 0.0
    retrain_scores, retrain_logits = self._reference(seed)
    original = self.original()
    result = run_method(
      self.setup,
      method,
      cfg,
      original.model_fns,
      original.variables,
      seed=seed,
      retrain_logits=retrain_logits,
      retrain_scores=retrain_scores,
      cache_dir=os.path.join(self.experiment_dir, 'cache'),
      checkpointer=manager,
      log_name=f'{row} s{seed}',
      prior_seconds=prior,
    )
    if manager is not None:
      manager.close()
    if result.logits is not None:
      result.scores.update(self.representation(result.variables, seed))
    self._save_run(method, seed, fingerprint, row, result.scores, result)
    print(
      f'[{row} s{seed}] '
      + ', '.join(
        f'{k} {result.scores[k]:.2f}' for k in ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'RTE_s')
      ),
      flush=True,
    )
    return result.scores

  def unlearned(self, row: str, seed: int) -> dict:
    """The unlearned weights of a completed method row (restored from its run directory)."""
    method, fingerprint, _ = self._row_run(row, seed)
    path = os.path.abspath(os.path.join(self.run_dir(method, seed, fingerprint), 'variables'))
    original = self.original().variables
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(path, jax.tree.map(ocp.utils.to_shape_dtype_struct, original))

  def _completed(self, method: str, seed: int, fingerprint: str) -> dict | None:
    path = os.path.join(self.run_dir(method, seed, fingerprint), 'run.json')
    redo = self.options.rerun == 'all' and fingerprint not in self._done
    if redo or not os.path.exists(path):
      return None
    with open(path) as f:
      saved = json.load(f)
    return saved['scores'] if saved.get('fingerprint') == fingerprint else None

  def _run_checkpointer(self, directory: str, fingerprint: str):
    every = self.training.checkpoint_every_steps
    checkpoints = os.path.join(directory, 'checkpoints')
    if self.options.rerun == 'all' or not _checkpoint_matches(checkpoints, fingerprint):
      # A fresh start: nothing of an older run (or a run of other settings) may be reused.
      shutil.rmtree(directory, ignore_errors=True)
    if not every:
      return None
    return RunCheckpointer(checkpoints, every, fingerprint)

  def _save_run(
    self,
    method: str,
    seed: int,
    fingerprint: str,
    row: str,
    scores: dict,
    result: MethodResult | None,
  ) -> None:
    self._done.add(fingerprint)
    if jax.process_index() != 0:
      return
    directory = self.run_dir(method, seed, fingerprint)
    os.makedirs(directory, exist_ok=True)
    if result is not None:
      weights = os.path.abspath(os.path.join(directory, 'variables'))  # Orbax wants absolute
      shutil.rmtree(weights, ignore_errors=True)
      with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(weights, result.variables)
    # run.json goes last: its presence means a completed run.
    experiment.write_json(
      os.path.join(directory, 'run.json'),
      {
        'method': method,
        'first_row': row,
        'seed': seed,
        'fingerprint': fingerprint,
        'scores': scores,
      },
    )
    shutil.rmtree(os.path.join(directory, 'checkpoints'), ignore_errors=True)

  @contextlib.contextmanager
  def _lock(self):
    """Refuses a second study running on the same experiment directory at once."""
    path = os.path.join(self.experiment_dir, 'study.lock')
    if jax.process_index() != 0:
      yield
      return
    os.makedirs(self.experiment_dir, exist_ok=True)
    owner = {'host': socket.gethostname(), 'pid': os.getpid()}
    try:
      fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
      with open(path) as f:
        held = json.load(f) if os.path.getsize(path) else {}
      if held.get('host') == owner['host'] and not _alive(held.get('pid', -1)):
        os.remove(path)  # left by a killed run on this machine
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      else:
        raise ConfigError(
          f'--config.workdir: another study (pid {held.get("pid")} on '
          f'{held.get("host")}) is running in {self.experiment_dir}; wait for it '
          f'or remove {path} if it is gone.'
        ) from None
    with os.fdopen(fd, 'w') as f:
      json.dump(owner, f)
    try:
      yield
    finally:
      os.remove(path)

  # --- results -----------------------------------------------------------------------------------

  def row_names(self) -> list[str]:
    return ['Original', 'Retrain'] + [row for row, _, _ in self.rows]

  def per_seed(self) -> dict[str, list[dict]]:
    """The scores of every completed run of the study's rows, by row (read from the run
    directories; rows or seeds not run yet are missing)."""
    out = {}
    for row in self.row_names():
      runs = []
      for seed in self.seeds:
        if not self._models_exist(seed):
          continue
        method, fingerprint, _ = self._row_run(row, seed)
        path = os.path.join(self.run_dir(method, seed, fingerprint), 'run.json')
        if os.path.exists(path):
          with open(path) as f:
            runs.append(json.load(f)['scores'])
      if runs:
        out[row] = runs
    return out

  def _models_exist(self, seed: int) -> bool:
    return all(
      os.path.exists(os.path.join(experiment.run_dir(self.setup, kind, s), 'metrics.json'))
      for kind, s in (('original', self.options.original_seed), ('retrain', seed))
    )

  def summary(self) -> dict[str, dict]:
    return {row: summarise(runs) for row, runs in self.per_seed().items()}

  def table(self) -> str:
    """The markdown table of the completed runs (mean ± std over seeds)."""
    return report.markdown_table(
      self.summary(), class_wise=self.setup.split.test_forget is not None
    )

  def title(self) -> str:
    c = self.data_config
    return (
      f'{c.dataset} / {self.training.model} / forget {c.forget} (split seed '
      f'{c.split_seed}), seeds {",".join(map(str, self.seeds))}'
    )

  def results(self) -> dict:
    """The results payload of the completed runs."""
    split = self.setup.split
    return {
      'config': self.config.to_dict(),
      'methods': [row for row, _, _ in self.rows],
      'seeds': self.seeds,
      'split': {
        'spec': split.spec,
        'seed': split.seed,
        'digest': split.digest,
        'num_forget': len(split.forget),
        'num_retain': len(split.retain),
      },
      'per_seed': self.per_seed(),
      'summary': self.summary(),
      'versions': _versions(),
      'device': _device(),
      'mia_convention': 'MIA-Efficacy: % of D_f predicted non-member',
      'wall_seconds': self.wall_seconds,
    }

  def write_results(self) -> dict:
    """Writes {results_name}.json/.md/.png into the experiment directory; returns the payload."""
    payload = self.results()
    if jax.process_index() == 0:
      report.write_results(
        self.experiment_dir,
        payload,
        payload['summary'],
        class_wise=self.setup.split.test_forget is not None,
        title=self.title(),
        make_plot=self.options.plot,
        name=self.options.results_name,
      )
    return payload

  def benchmark(
    self,
    steps: int = 20,
    out: str | None = None,
    many_models: tuple[int, ...] = (),
    equal_examples: bool = False,
  ) -> dict:
    """Step timings of every row from a freshly initialised model (`jaxunlearn.benchmarking`;
    with `equal_examples`, rows of two-batch steps also at half the batch per slot), and, for
    each K in `many_models`, K vmapped training steps against K single ones; with the device and
    versions; written to `out` (JSON) if given."""
    payload = {
      'results': benchmarking.benchmark(
        self.setup, self.rows, steps, equal_examples=equal_examples
      ),
      'steps': steps,
      'dataset': self.data_config.dataset,
      'model': self.training.model,
      'batch_size': self.training.batch_size,
      'device': _device(),
      'versions': _versions(),
    }
    if many_models:
      mesh = sharding_lib.make_model_mesh(0)
      payload['many_models'] = benchmarking.many_models_speed(
        self.setup, mesh, list(many_models), steps
      )
    if out:
      experiment.write_json(out, payload)
    return payload

  def plot(self, path: str | None = None) -> str:
    """Draws the results picture of the completed runs into `path` (default: the experiment
    directory's {results_name}.png); returns the path."""
    path = path or os.path.join(self.experiment_dir, f'{self.options.results_name}.png')
    report.plot(self.summary(), path, self.title())
    return path


class RunCheckpointer(CheckpointManager):
  """A method run's checkpoints, tagged with the run's fingerprint and the seconds it has run."""

  def __init__(self, directory: str, every_steps: int, fingerprint: str):
    super().__init__(directory, every_steps=every_steps, keep=1, meta={'fingerprint': fingerprint})
    self._start = time.perf_counter()
    self._prior = self.prior_seconds()

  def prior_seconds(self) -> float:
    meta = self.restore_meta()
    return float(meta['seconds']) if meta else 0.0

  def save(self, state, metrics: dict) -> None:
    self.meta = {**self.meta, 'seconds': self._prior + time.perf_counter() - self._start}
    super().save(state, metrics)


def _checkpoint_matches(directory: str, fingerprint: str) -> bool:
  """Whether `directory` holds checkpoints of the run with `fingerprint` (files only: no
  collective, so every process of a multi-host run may ask at any moment)."""
  try:
    meta = read_meta(directory)
  except Exception:  # pylint: disable=broad-except
    return False  # unreadable: the run starts afresh
  return bool(meta) and meta.get('fingerprint') == fingerprint


def _versions() -> dict:
  return {p: metadata.version(p) for p in _PACKAGES}


def _device() -> dict:
  return {
    'platform': jax.devices()[0].platform,
    'kind': jax.devices()[0].device_kind,
    'count': jax.device_count(),
    'host': platform.machine(),
  }


def weights_digest(variables: dict) -> str:
  """A digest of a model's weights (paths, shapes, dtypes and bytes)."""
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(variables))[0]:
    leaf = np.asarray(leaf)
    h.update(f'{jax.tree_util.keystr(path)}|{leaf.dtype}|{leaf.shape}|'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except (OSError, ValueError):
    return False
  return True
