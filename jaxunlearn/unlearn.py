"""Running one unlearning method on the shared loop and scoring it against Retrain."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxunlearn import experiment, metrics
from jaxunlearn.config import ConfigError
from jaxunlearn.loop import Checkpointer, run
from jaxunlearn.methods import UnlearnContext, registry
from jaxunlearn.metrics import tree_bytes
from jaxunlearn.state import ModelFns


@dataclasses.dataclass
class MethodResult:
  variables: dict
  scores: dict  # UA, FA, RA, TA, MIA (+ TA_retain/TA_forget), KL, AvgGap, RTE_s, ...
  logits: dict | None  # None when the run diverged (non-finite weights)


def parse_seeds(value, flag: str = '--config.seeds') -> list[int]:
  try:
    seeds = [int(s) for s in str(value).split(',') if s.strip()]
  except ValueError:
    seeds = []
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ConfigError(
      f'{flag}={value!r}: give distinct non-negative integers separated by commas, e.g. 0,1,2.'
    )
  return seeds


def context(
  setup: experiment.Setup,
  model_fns: ModelFns,
  original: dict,
  *,
  seed: int,
  batch_size: int,
  cache_dir: str = '',
) -> UnlearnContext:
  """What a method may read, for a run of `seed` at `batch_size`."""

  def init_variables(init_seed: int) -> dict:
    return experiment.build_model(setup.config, setup.info, init_seed)[1]

  return UnlearnContext(
    model_fns=model_fns,
    original=original,
    data=setup.train,
    num_classes=setup.info.num_classes,
    batch_size=batch_size,
    seed=seed,
    mesh=setup.mesh,
    init_variables=init_variables,
    cache_dir=cache_dir,
    model_name=setup.training.model,
  )


def run_method(
  setup: experiment.Setup,
  name: str,
  method_cfg,
  model_fns: ModelFns,
  original: dict,
  *,
  seed: int,
  retrain_logits: dict | None = None,
  retrain_scores: dict | None = None,
  cache_dir: str = '',
  checkpointer: Checkpointer | None = None,
  log_name: str | None = None,
  prior_seconds: float = 0.0,
) -> MethodResult:
  """Unlearns `original` with method `name` and scores it; `original` itself is never modified.

  `method_cfg` is the method's typed config or a ConfigDict of it (validated here).

  RTE is the wall time of the unlearning phase (the method's preparation, e.g. a saliency mask,
  and its steps), excluding compilation, which is reported apart as ``compile_s``; a run resumed
  from a checkpoint adds `prior_seconds`, the time its earlier part took.
  """
  method = registry.get(name)
  method_cfg = registry.parse_config(name, method_cfg)
  batch_size = getattr(method_cfg, 'batch_size', setup.training.batch_size)
  ctx = context(setup, model_fns, original, seed=seed, batch_size=batch_size, cache_dir=cache_dir)
  t0 = time.perf_counter()
  plan = method.build(ctx, method_cfg)
  jax.block_until_ready((plan.state, plan.constants))
  prepare_seconds = time.perf_counter() - t0
  result = run(
    plan.program,
    plan.state,
    setup.train,
    mesh=setup.mesh,
    seed=seed,
    constants=plan.constants,
    checkpointer=checkpointer,
    augment=True,
    log_every=setup.training.log_every,
    name=log_name or f'{name} s{seed}',
  )
  variables = jax.device_get(
    plan.finalize(result.state) if plan.finalize else result.state.variables
  )
  if all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables)):
    scores, logits = experiment.evaluate(setup, model_fns, variables, seed=seed)
    scores['diverged'] = 0.0
    add_reference_scores(scores, logits, retrain_scores, retrain_logits)
  else:
    # A diverged run is a result (the method failed with these settings), not a crash that would
    # lose the other runs: its scores are nan, and tables show the share of diverged seeds.
    scores = {k: float('nan') for k in DIVERGED_SCORES}
    scores['diverged'] = 1.0
    logits = None
  scores.update(
    RTE_s=prior_seconds + prepare_seconds + result.run_seconds,
    compile_s=result.compile_seconds,
    steps=len(plan.program.schedule),
    trainable_fraction=1.0,
    opt_state_bytes=float(tree_bytes(plan.state.opt_state)),
  )
  scores.update(plan.info or {})
  return MethodResult(variables, scores, logits)


DIVERGED_SCORES = ('UA', 'FA', 'RA', 'TA', 'MIA', 'KL', 'AvgGap', 'ToW')


def add_reference_scores(
  scores: dict, logits: dict, retrain_scores: dict | None, retrain_logits: dict | None
) -> None:
  """Adds KL(retrain || model) on D_f, the Avg. Gap and ToW to retrain, in place."""
  if retrain_logits is not None:
    scores['KL'] = metrics.kl_to_reference(retrain_logits['forget'], logits['forget'])
  if retrain_scores is not None:
    scores['AvgGap'] = metrics.avg_gap(scores, retrain_scores)
    scores['ToW'] = metrics.tow(scores, retrain_scores)


def summarise(per_seed: list[dict]) -> dict:
  """Mean and standard deviation (over seeds) of every numeric score; the nan scores of diverged
  seeds are left out (``n`` counts the seeds used; ``diverged`` the share that diverged)."""
  keys = sorted({k for s in per_seed for k, v in s.items() if isinstance(v, (int, float))})
  out = {}
  for k in keys:
    values = np.array([s[k] for s in per_seed if k in s], float)
    values = values[np.isfinite(values)]
    out[k] = (
      {'mean': float(values.mean()), 'std': float(values.std()), 'n': int(values.size)}
      if values.size
      else {'mean': float('nan'), 'std': float('nan'), 'n': 0}
    )
  return out
