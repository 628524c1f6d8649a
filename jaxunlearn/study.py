"""The public API: a study, from a config to a table, with every run saved and reused.

    import jaxunlearn as ju
    study = ju.Study(ju.study_config(dataset='digits', forget='class:3', methods='ft,salun'))
    study.run()
    print(study.table())

A `Study` validates its whole config when it is made (every bad value is one `ConfigError` line,
before any data is built). Its runs are: the Original (trained once), Retrain (one per seed) and one
row per method or variant and seed. Each row's run is kept in the run store (`jaxunlearn.runs`)
under a fingerprint of everything that determines it (method and config, the Original's and
Retrain's weights, the split, the seed, dataset, model and evaluation settings). Running the same
study again reuses every completed run whose fingerprint matches and runs only the rest; long
method runs checkpoint and resume mid-run. Results files are rebuilt from the run store, so a
partial study can be tabulated at any time. The data, split, recipes and evaluation: `Experiment`.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from jaxunlearn import experiment, figures, many_models, report, runs
from jaxunlearn import sharding as sharding_lib
from jaxunlearn.config import (
  Config,
  DistributedConfig,
  StudyConfig,
  from_config_dict,
  parse_seeds,
  section_from_flat,
  to_config_dict,
  training_config,
)
from jaxunlearn.methods import registry
from jaxunlearn.models import model_name, resolve
from jaxunlearn.unlearn import add_reference_scores, run_method, summarise

RUN_FORMAT = 3  # bump when what a run's scores mean changes: every run is redone
REFERENCE_ROWS = report.REFERENCE_ROWS


def study_config(preset: str | None = None, **overrides) -> ml_collections.ConfigDict:
  """The main job's config: an experiment plus the study's rows and every method's settings.

  Args:
    preset: a method preset (e.g. 'cifar10_resnet18') for the methods that have it; the others
      start from the preset of the study's forget kind and dataset (`registry.resolve`).
    **overrides: values to set; nested keys with '__' or '.' inside a dict key, e.g.
      ``study_config(**{'method.ft.epochs': 2})`` or ``study_config(epochs=3)``.

  Returns:
    An unlocked ConfigDict.
  """
  c = training_config()
  c.update(to_config_dict(StudyConfig()))
  c.method = registry.config_dicts(preset)
  for key, value in overrides.items():
    *parents, leaf = key.replace('__', '.').split('.')
    node = c
    for part in parents:
      node = node[part]
    node[leaf] = value
  return c


class Study:
  """One unlearning study (see the module docstring).

  Args:
    config: a `study_config` ConfigDict (possibly overridden by flags); a `training_config` one
      (no methods) serves to train the Original and Retrain models alone.
    rows: (row name, method, its config) of every row, in place of those `config.methods` names
      (e.g. one row per trial of a tuning grid); each config is validated.
    model: a model class or factory (any `nnx.Module` called as ``model(images, train=...) ->
      logits``; see `jaxunlearn.models`), in place of the one `config.model` names.
    original: a trained Original's weights file, in place of `config.original` (see
      `jaxunlearn.weight_files`): the Original is read from it instead of trained.
  """

  def __init__(
    self,
    config,
    rows: list[tuple[str, str, Any]] | None = None,
    *,
    model: Callable | None = None,
    original: str | None = None,
  ):
    if original is not None:
      config = copy.deepcopy(config)
      config.original = os.fspath(original)
    self.data_config, self.training, self.evaluation = experiment.sections(config)
    resolve(model if model is not None else self.training.model)  # fails fast: one line
    self.model_constructor = model
    if model is not None:
      self.training = self.training.replace(model=model_name(model))
    self.options = section_from_flat(StudyConfig, config)
    self.distributed = from_config_dict(
      DistributedConfig, config.get('distributed', {}), '--config.distributed'
    )
    self.seeds = parse_seeds(self.options.seeds)
    self.rows, self.presets = (
      registry.method_rows(
        config.method,
        self.options.methods,
        forget=self.data_config.forget,
        dataset=self.data_config.dataset,
      )
      if 'method' in config
      else ([], {})
    )
    if rows is not None:
      self.rows = [
        (row, method, registry.parse_config(method, cfg, f'--config.method.{method} ({row})'))
        for row, method, cfg in rows
      ]
    self.config = config
    self.wall_seconds = 0.0
    self._done = set()  # fingerprints of the runs completed by this object
    self._bases = {}  # the fingerprint payload of each seed

  @functools.cached_property
  def experiment(self) -> experiment.Experiment:
    """The data on device, the split, the mesh and the recipes (built on first use)."""
    dist = self.distributed
    sharding_lib.maybe_initialize_distributed(
      dist.coordinator_address or None, dist.num_processes or None, dist.process_id
    )
    return experiment.prepare(self.config, self.model_constructor)

  @property
  def experiment_dir(self) -> str:
    return self.experiment.experiment_dir

  @functools.cached_property
  def store(self) -> runs.RunStore:
    return runs.RunStore(self.experiment_dir)

  # --- the reference models ------------------------------------------------------------------

  def original(self, seed: int | None = None) -> experiment.TrainedModel:
    """The Original of `seed` (default: original_seed), trained, resumed or loaded."""
    seed = self.options.original_seed if seed is None else seed
    return self.experiment.trained('original', seed, no_train=self.options.no_train)

  def retrain(self, seed: int) -> experiment.TrainedModel:
    """Retrain of `seed` (trained, resumed or loaded); its scores are its training metrics."""
    return self.experiment.trained('retrain', seed, no_train=self.options.no_train)

  def representation(self, variables: dict, seed: int) -> dict:
    """FD and CKA of a model against the Original (and CKA against Retrain of `seed`)."""
    return self.experiment.representation(
      variables, original_seed=self.options.original_seed, seed=seed
    )

  def fingerprint(self, method: str, cfg: Config | None, seed: int) -> str:
    """A digest of everything that determines the run of `method` with `cfg` at `seed`."""
    if seed not in self._bases:
      self._bases[seed] = {
        'format': RUN_FORMAT,
        'dataset': self.data_config.dataset,
        'split': self.experiment.split.digest,
        'model': self.training.model,
        'model_kwargs': self.experiment.model_kwargs,
        'evaluation': dataclasses.asdict(self.evaluation),
        'seed': seed,
        'original': runs.weights_digest(self.original().variables),
        'retrain': runs.weights_digest(self.retrain(seed).variables),
      }
      if self.training.compute_dtype != 'float32':  # float32 runs keep their earlier fingerprints
        self._bases[seed]['compute_dtype'] = self.training.compute_dtype
    config = dataclasses.asdict(cfg) if cfg is not None else None
    return runs.fingerprint({**self._bases[seed], 'method': method, 'config': config})

  def _row_run(self, row: str, seed: int) -> tuple[str, str]:
    """(method, fingerprint) of `row` at `seed`; Original and Retrain are their own 'method'."""
    if row in REFERENCE_ROWS:
      return row, self.fingerprint(row, None, seed)
    method, cfg = {r: (m, c) for r, m, c in self.rows}[row]
    return method, self.fingerprint(method, cfg, seed)

  def _completed(self, method: str, seed: int, fingerprint: str) -> dict | None:
    if self.options.rerun == 'all' and fingerprint not in self._done:
      return None
    return self.store.completed(method, seed, fingerprint)

  # --- rows ----------------------------------------------------------------------------------

  def run(self) -> dict:
    """Runs (or reuses) every row and seed, writes the results files and returns their
    payload."""
    if self.options.only_report:
      return self.write_results()
    start = time.perf_counter()
    if self.presets:
      print(
        registry.describe_presets(self.presets, self.data_config.forget, self.data_config.dataset)
      )
    self.check_methods()
    with self.store.lock():
      for seed in self.seeds:
        self.reference_rows(seed)
        for row, method, cfg in self.rows:
          self.run_row(row, method, cfg, seed)
      self.wall_seconds += time.perf_counter() - start
      return self.write_results()

  def check_methods(self) -> None:
    """The checks of every row's config that need the model (e.g. RFA-LoRA's layer names), on a
    freshly initialised model, before any training."""
    fns, variables = self.experiment.model(0)
    if self.experiment.original_file is not None:
      variables = self.original().variables
    for _, method, cfg in self.rows:
      check = registry.get(method).check
      if check is not None:
        check(cfg, fns, variables, self.training.model, self.experiment.info.image_shape)

  def reference_rows(self, seed: int) -> None:
    """The Original and Retrain rows of `seed` (scored against Retrain)."""
    for row in REFERENCE_ROWS:
      _, fingerprint = self._row_run(row, seed)
      if self._completed(row, seed, fingerprint) is not None:
        continue
      retrain_scores, retrain_logits = self.experiment.retrain_reference(seed)
      model = self.retrain(seed) if row == 'Retrain' else self.original()
      if row == 'Retrain':
        scores = dict(retrain_scores)
      else:
        scores, logits = self.experiment.evaluate(model.model_fns, model.variables, seed=seed)
        scores['RTE_s'] = model.scores['run_seconds']
        add_reference_scores(scores, logits, retrain_scores, retrain_logits)
      scores.update(self.representation(model.variables, seed))
      self._save(row, seed, fingerprint, row, scores, None)

  def run_row(self, row: str, method: str, cfg: Config, seed: int) -> dict:
    """The scores of `row` (method `method` with `cfg`) at `seed`: read from the run store when
    a completed run with the same fingerprint is there, else run (resuming from a checkpoint of
    an interrupted run)."""
    fingerprint = self.fingerprint(method, cfg, seed)
    done = self._completed(method, seed, fingerprint)
    if done is not None:
      print(f'[{row} s{seed}] reused {self.store.run_dir(method, seed, fingerprint)}', flush=True)
      return done
    checkpointer = self.store.checkpointer(
      method,
      seed,
      fingerprint,
      self.training.checkpoint_every_steps,
      fresh=self.options.rerun == 'all',
    )
    original = self.original()
    result = run_method(
      self.experiment,
      method,
      cfg,
      original.model_fns,
      original.variables,
      seed=seed,
      reference=self.experiment.retrain_reference(seed),
      cache_dir=os.path.join(self.experiment_dir, 'cache'),
      checkpointer=checkpointer,
      log_name=f'{row} s{seed}',
    )
    if result.logits is not None:
      result.scores.update(self.representation(result.variables, seed))
    self._save(method, seed, fingerprint, row, result.scores, result.variables)
    return result.scores

  def _save(self, method, seed, fingerprint, row, scores, variables) -> None:
    self._done.add(fingerprint)
    self.store.save(method, seed, fingerprint, row, scores, variables)

  def unlearned(self, row: str, seed: int) -> dict:
    """The unlearned weights of a completed method row (restored from the run store)."""
    method, fingerprint = self._row_run(row, seed)
    return self.store.variables(method, seed, fingerprint, self.original().variables)

  def many_models(self, cfg) -> dict:
    """The many-model evaluation of the study's rows (`jaxunlearn.many_models.evaluate`)."""
    return many_models.evaluate(self, cfg)

  # --- results -------------------------------------------------------------------------------

  def row_names(self) -> list[str]:
    return list(REFERENCE_ROWS) + [row for row, _, _ in self.rows]

  def per_seed(self) -> dict[str, list[dict]]:
    """The scores of every completed run of the study's rows, by row (read from the run store;
    rows or seeds not run yet are missing)."""
    out = {}
    for row in self.row_names():
      scores = []
      for seed in self.seeds:
        if self._models_exist(seed):
          method, fingerprint = self._row_run(row, seed)
          done = self.store.completed(method, seed, fingerprint)
          if done is not None:
            scores.append(done)
      if scores:
        out[row] = scores
    return out

  def _models_exist(self, seed: int) -> bool:
    return self.experiment.is_trained(
      'original', self.options.original_seed
    ) and self.experiment.is_trained('retrain', seed)

  def summary(self) -> dict[str, dict]:
    return {row: summarise(scores) for row, scores in self.per_seed().items()}

  def table(self) -> str:
    """The markdown table of the completed runs (mean ± std over seeds; with 2 seeds or more,
    the groups of rows whose Avg. Gap cannot be told apart)."""
    return report.study_table(
      self.summary(), class_wise=self.experiment.class_wise, per_seed=self.per_seed()
    )

  def title(self) -> str:
    c = self.data_config
    return (
      f'{c.dataset} / {self.training.model} / forget {c.forget} (split seed '
      f'{c.split_seed}), seeds {",".join(map(str, self.seeds))}'
    )

  def table_note(self) -> str:
    """The note under the table: the metrics, the tie groups, and where the Original came
    from."""
    note = report.study_note(self.per_seed())
    init, source = self.experiment.init_file, self.experiment.original_file
    if init is not None:
      layout = f' ({init["layout"]} layout)' if init['layout'] else ''
      note += (
        f' The Original and Retrain start from the pre-trained weights {init["path"]}{layout} '
        f'(sha256 {init["sha256"][:16]}) with a fresh head, and are fine-tuned by the training '
        'recipe (Original on D, Retrain on D_r).'
      )
    if source is not None:
      note += (
        f' The Original is read from {source["path"]} (sha256 {source["sha256"][:16]}), not '
        'trained; Retrain is trained from scratch on D_r by the training recipe.'
      )
    return note

  def results(self) -> dict:
    """The results payload of the completed runs."""
    return {
      'config': {**self.config.to_dict(), 'model': self.training.model},
      'methods': [row for row, _, _ in self.rows],
      'presets': self.presets,
      'seeds': self.seeds,
      'split': self.experiment.split.summary(),
      'init_file': self.experiment.init_file,
      'original_file': self.experiment.original_file,
      'per_seed': self.per_seed(),
      'summary': self.summary(),
      **report.provenance(self.experiment.mesh),
      'mia_convention': 'MIA-Efficacy: % of D_f predicted non-member',
      'wall_seconds': self.wall_seconds,
    }

  def write_results(self) -> dict:
    """Writes {results_name}.json/.md/.png into the experiment directory; returns the payload."""
    payload = self.results()
    if jax.process_index() == 0:
      report.write_results(
        self.experiment_dir,
        self.options.results_name,
        payload,
        title=self.title(),
        table=self.table(),
        note=self.table_note(),
        figure=figures.trade_off_figure(payload['summary'], self.title())
        if self.options.plot
        else None,
      )
    return payload
