"""Running one unlearning method on the shared loop and scoring it against Retrain."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np

from jaxunlearn import metrics
from jaxunlearn.experiment import Experiment
from jaxunlearn.loop import Checkpointer, run
from jaxunlearn.methods import registry
from jaxunlearn.metrics import tree_bytes
from jaxunlearn.state import ModelFns


@dataclasses.dataclass
class MethodResult:
  variables: dict
  scores: dict  # UA, FA, RA, TA, MIA (+ TA_retain/TA_forget), KL, AvgGap, RTE_s, ...
  logits: dict | None  # None when the run diverged (non-finite weights)


def run_method(
  experiment: Experiment,
  name: str,
  method_cfg,
  model_fns: ModelFns,
  original: dict,
  *,
  seed: int,
  reference: tuple[dict, dict] | None = None,
  cache_dir: str = '',
  checkpointer: Checkpointer | None = None,
  log_name: str | None = None,
) -> MethodResult:
  """Unlearns `original` with method `name` and scores it; `original` itself is never modified.

  `method_cfg` is the method's typed config or a ConfigDict of it (validated here); `reference`
  is Retrain's (scores, logits), against which the Avg. Gap, ToW and KL are computed. A given
  `checkpointer` is closed at the end.

  RTE is the wall time of the unlearning phase (the method's preparation, e.g. a saliency mask,
  and its steps), excluding compilation, which is reported apart as ``compile_s``; a run resumed
  from a checkpoint adds the time its earlier parts took (`checkpointer.prior_seconds()`: their
  wall time up to their last checkpoint, their preparation and compilation included, which is
  what the interruption cost).
  """
  method = registry.get(name)
  method_cfg = registry.parse_config(name, method_cfg)
  log_name = log_name or f'{name} s{seed}'
  batch_size = getattr(method_cfg, 'batch_size', experiment.training.batch_size)
  ctx = experiment.context(
    model_fns, original, seed=seed, batch_size=batch_size, cache_dir=cache_dir
  )
  t0 = time.perf_counter()
  plan = method.build(ctx, method_cfg)
  jax.block_until_ready((plan.state, plan.constants))
  prepare_seconds = time.perf_counter() - t0
  result = run(
    plan.program,
    plan.state,
    experiment.train,
    mesh=experiment.mesh,
    seed=seed,
    constants=plan.constants,
    checkpointer=checkpointer,
    augment=True,
    log_every=experiment.training.log_every,
    name=log_name,
  )
  prior_seconds = 0.0
  if checkpointer is not None:
    prior_seconds = checkpointer.prior_seconds()
    checkpointer.close()
  variables = jax.device_get(
    plan.finalize(result.state) if plan.finalize else result.state.variables
  )
  t0 = time.perf_counter()
  if all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(variables)):
    scores, logits = experiment.evaluate(model_fns, variables, seed=seed)
    scores['diverged'] = 0.0
    if reference is not None:
      add_reference_scores(scores, logits, *reference)
  else:
    # A diverged run is a result (the method failed with these settings), not a crash that would
    # lose the other runs: its scores are nan, and tables show the share of diverged seeds.
    scores = {k: float('nan') for k in DIVERGED_SCORES}
    scores['diverged'] = 1.0
    logits = None
  scores.update(
    RTE_s=prior_seconds + prepare_seconds + result.run_seconds,
    prepare_s=prepare_seconds,
    steps_s=prior_seconds + result.run_seconds,
    eval_s=time.perf_counter() - t0,
    compile_s=result.compile_seconds,
    steps=len(plan.program.schedule),
    trainable_fraction=1.0,
    opt_state_bytes=float(tree_bytes(plan.state.opt_state)),
  )
  scores.update(plan.info or {})
  shown = ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'RTE_s')
  print(f'[{log_name}] ' + ', '.join(f'{k} {scores[k]:.2f}' for k in shown if k in scores))
  return MethodResult(variables, scores, logits)


DIVERGED_SCORES = ('UA', 'FA', 'RA', 'TA', 'MIA', 'KL', 'AvgGap', 'ToW')


def add_reference_scores(scores: dict, logits: dict, retrain_scores: dict, retrain_logits: dict):
  """Adds KL(retrain || model) on D_f, the Avg. Gap and ToW to retrain, in place."""
  scores['KL'] = metrics.kl_to_reference(retrain_logits['forget'], logits['forget'])
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
