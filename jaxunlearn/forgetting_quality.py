"""Many-model unlearning scores: NeurIPS 2023 forgetting quality, KLOM and relearn time.

Each score compares distributions *over models*: K unlearned models (one unlearning run per original
model, e.g. per training seed) against K models retrained from scratch on D_r, evaluated on the same
examples. Everything here is a pure numpy function over logits (or per-example statistics of them),
computed in float64 on the host; inputs may be numpy or jax arrays of shape [K, N, C] (logits) or
[K, N] (per-example statistics), with integer labels [N].

Forgetting quality F (NeurIPS 2023 Machine Unlearning challenge; Triantafillou et al. 2024,
arXiv 2406.09073; public code google-deepmind/unlearning_evaluation, `metric.py`). For each forget
example, threshold attacks try to tell the unlearned models' logit-scaled confidences from the
retrained models'; their error rates give an (epsilon, delta = 1e-5) estimate in [0, 50]. Epsilons
fall in buckets of width 0.5 and bucket b scores 2^-b; F is the mean over D_f, in [0, 1], HIGHER is
better (1: no attack tells the two sets of models apart). The challenge's final score is
F * RA_u / RA_r * TA_u / TA_r (accuracies averaged over the K models), also higher is better.
F depends on K: with K models per side only epsilons below ceil(log(K - 1)) score (K = 8: four
buckets worth 1, 1/2, 1/4, 1/8; K = 512: fourteen), because K samples cannot support a larger
estimate. Compare F only at equal K and always report K, which is returned with the score.

KLOM (Georgiev et al. 2024, "Attribute-to-Delete", arXiv 2410.23232, appendix E.1). Per example,
KL(unlearned || retrained) between 20-bin histograms of the margin z_y - logsumexp_{k != y} z_k over
the models; computed on forget, retain and validation examples and summarised per set by the median
and the 95th percentile. LOWER is better (0: identical histograms). It also depends on K, through
the histograms' resolution: report K with it.

Relearn time (Golatkar et al. 2020): fine-tuning steps on D_f until the forget accuracy is back at
the original model's. Read it against the retrained models' relearn time: an unlearned model that
relearns much faster than a retrained one still holds the forgotten information.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

DELTA = 1e-5
EPSILON_CAP = 50.0
# Threshold density of the attacks, per unit of logit-scaled confidence.
THRESHOLDS_PER_UNIT = 100
# The double-threshold rule moves each end of its interval over +-BUFFER around the peakier set.
BUFFER = 2.0
BUCKET_WIDTH = 0.5
# Below this ratio of the two sets' ranges, one set is a near point mass: epsilon is the cap.
MIN_RANGE_RATIO = 0.01

KLOM_BINS = 20
KLOM_SMOOTHING = 1e-5
KLOM_CLIP = 100.0

# Examples per block in the double-threshold scan: keeps its [block, 400] work arrays in cache.
_BLOCK = 256


class ForgettingQuality(NamedTuple):
  """The challenge's forgetting quality of one unlearning method.

  Attributes:
    quality: F, the mean of `points` over the forget set, in [0, 1]; higher is better.
    num_models: K, the number of models per side; F is comparable only at equal K.
    epsilons: [N_f] per-example epsilon estimates, in [0, epsilon_cap].
    points: [N_f] per-example bucket scores 2^-bucket (0 past the last bucket K supports).
  """

  quality: float
  num_models: int
  epsilons: np.ndarray
  points: np.ndarray


class ChallengeScore(NamedTuple):
  """The challenge's final score F * RA_u / RA_r * TA_u / TA_r, with the K it was computed at."""

  score: float
  forgetting_quality: float
  num_models: int


class KlomSummary(NamedTuple):
  """Median and 95th percentile (numpy's linear interpolation) of per-example KLOM values."""

  median: float
  p95: float


class RelearnTime(NamedTuple):
  """Per-run relearn times.

  Attributes:
    steps: int64, the first step whose forget accuracy reached the target, or the cap.
    reached: bool, False where the run never reached the target (its `steps` is the cap).
  """

  steps: np.ndarray
  reached: np.ndarray


class RelearnSummary(NamedTuple):
  """Mean and (population) std of relearn times over runs; capped runs count at the cap."""

  mean: float
  std: float
  num_reached: int
  num_runs: int


# ------------------------------------------------------------------------------- input checks


def _as_logits(logits, name: str) -> np.ndarray:
  array = np.asarray(logits, dtype=np.float64)
  if array.ndim != 3:
    raise ValueError(
      f'{name} must have shape (models, examples, classes); got shape {array.shape}.'
    )
  if array.shape[1] == 0:
    raise ValueError(f'{name} has 0 examples; at least one is needed.')
  if array.shape[2] < 2:
    raise ValueError(f'{name} has {array.shape[2]} classes; a margin needs at least 2.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains nan or inf; only finite logits are allowed.')
  return array


def _as_labels(labels, num_examples: int, num_classes: int, name: str) -> np.ndarray:
  array = np.asarray(labels)
  if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'{name} must hold integer class ids; got dtype {array.dtype}.')
  if array.shape != (num_examples,):
    raise ValueError(
      f'{name} must have shape ({num_examples},) to match the logits; got shape {array.shape}.'
    )
  if array.min() < 0 or array.max() >= num_classes:
    raise ValueError(
      f'{name} must lie in [0, {num_classes}); got values in [{array.min()}, {array.max()}].'
    )
  return array.astype(np.int64)


def _as_per_model(values, name: str, min_models: int) -> np.ndarray:
  array = np.asarray(values, dtype=np.float64)
  if array.ndim != 2:
    raise ValueError(f'{name} must have shape (models, examples); got shape {array.shape}.')
  if array.shape[0] < min_models:
    raise ValueError(f'{name} has {array.shape[0]} models; at least {min_models} are needed.')
  if array.shape[1] == 0:
    raise ValueError(f'{name} has 0 examples; at least one is needed.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains nan or inf; only finite values are allowed.')
  return array


def _check_same_shape(unlearned, retrained, unlearned_name, retrained_name):
  if unlearned.shape != retrained.shape:
    raise ValueError(
      f'{unlearned_name} has shape {unlearned.shape} but {retrained_name} has '
      f'{retrained.shape}; both need the same models and examples.'
    )


# ------------------------------------------------------------------------------- margins


def logit_margin(logits, labels) -> np.ndarray:
  """Per-model, per-example margin z_y - logsumexp_{k != y} z_k.

  This is also the challenge's logit-scaled confidence log p_y - log sum_{k != y} p_k (the softmax
  normaliser cancels). Computed from the logits directly, so it stays exact where p_y rounds to 1;
  the challenge code goes through probabilities with a 1e-45 floor, which saturates near +-103.6.

  Args:
    logits: [K, N, C] finite logits of K models on N examples.
    labels: [N] integer labels in [0, C).

  Returns:
    [K, N] float64 margins.
  """
  logits = _as_logits(logits, 'logits')
  num_models, num_examples, num_classes = logits.shape
  labels = _as_labels(labels, num_examples, num_classes, 'labels')
  rows = np.arange(num_examples)
  margins = np.empty((num_models, num_examples))
  # One model at a time bounds the masked copy to [N, C], whatever K is.
  for k in range(num_models):
    others = logits[k].copy()
    correct = others[rows, labels]
    others[rows, labels] = -np.inf
    peak = others.max(axis=1)
    margins[k] = correct - peak - np.log(np.exp(others - peak[:, None]).sum(axis=1))
  return margins


# ------------------------------------------------------------------------------- epsilons


def _epsilon_table(num_models: int, delta: float) -> np.ndarray:
  """eps[fp, fn]: one threshold's epsilon from its false-positive and false-negative counts.

  -inf marks the thresholds the definition drops: exactly one error rate zero (taken as too few
  samples to trust), or both rates one (both logs undefined).
  """
  rates = np.arange(num_models + 1) / num_models
  fpr, fnr = rates[:, None], rates[None, :]
  with np.errstate(divide='ignore', invalid='ignore'):
    one_way = np.log(1.0 - delta - fpr) - np.log(fnr)
    other_way = np.log(1.0 - delta - fnr) - np.log(fpr)
  # fmax takes the defined side where a rate of 1 leaves the other one nan.
  table = np.maximum(np.fmax(one_way, other_way), 0.0)
  table[0, 1:] = np.nan
  table[1:, 0] = np.nan
  table[0, 0] = np.inf  # Perfect separation.
  return np.where(np.isnan(table), -np.inf, table)


def _interval_table(table):
  """`table` indexed by the interval rule's codes (see `_double_threshold_epsilons`), flattened.

  Row: outer models inside + K (= false positives + K); column: inner models inside + K
  (= K - false negatives + K). Negative counts mean an empty interval: dropped (-inf).
  """
  num_models = table.shape[0] - 1
  interval_table = np.full((2 * num_models + 1, 2 * num_models + 1), -np.inf)
  interval_table[num_models:, num_models:] = table[:, ::-1]
  return interval_table.ravel()


def _single_threshold_epsilons(positive, negative, table):
  """Best epsilon of the rule `confidence >= t` -> positive, t on the reference's grid.

  The grid has ceil(100 * range) points spread evenly over the pooled range. Rather than testing
  each point, this walks the pooled sorted values: the rates only change there, and the split
  between sorted values j - 1 and j is reachable iff a grid point lies in (value[j-1], value[j]].
  """
  num_models = positive.shape[1]
  pooled = np.concatenate([positive, negative], axis=1)
  order = np.argsort(pooled, axis=1, kind='stable')
  values = np.take_along_axis(pooled, order, axis=1)
  low, span = values[:, :1], values[:, -1:] - values[:, :1]
  num_thresholds = np.ceil(span * THRESHOLDS_PER_UNIT)
  with np.errstate(divide='ignore', invalid='ignore'):
    grid_index = np.floor((values - low) / span * (num_thresholds - 1))
  reachable = np.concatenate([num_thresholds >= 1, grid_index[:, 1:] > grid_index[:, :-1]], axis=1)
  is_positive = (order < num_models).astype(np.int64)
  positives_below = np.cumsum(is_positive, axis=1) - is_positive
  negatives_below = np.arange(2 * num_models) - positives_below
  epsilons = table[num_models - negatives_below, positives_below]
  return np.where(reachable, epsilons, -np.inf).max(axis=1)


def _grid_counts(values, start, step, num, inclusive):
  """counts[e, m] = #{k : values[e, k] <= start[e] + m * step} (< if not inclusive)."""
  position = (values - start[:, None]) / step
  first = np.ceil(position) if inclusive else np.floor(position) + 1
  first = np.clip(first, 0, num).astype(np.int64)
  rows = first.shape[0]
  first += (num + 1) * np.arange(rows)[:, None]
  hist = np.bincount(first.ravel(), minlength=rows * (num + 1)).reshape(rows, num + 1)
  return np.cumsum(hist[:, :num], axis=1)


def _double_threshold_epsilons(positive, negative, interval_table):
  """Best epsilon of the rule `l <= confidence <= r` -> the peakier set, on the reference's grid.

  The peakier set (the smaller range; the negative side on a tie) has range w and maximum top.
  Right ends r_i = top - 2 + i * s and, for each r_i, left ends r_i - w - 2 + j * s, with i, j < 400
  and s = 4 / 399. Every left end is then top - w - 4 + (i + j) * s: one shared grid of 799 points,
  so counts come from cumulative histograms and pair (i, j) is a lookup.
  """
  num_models = positive.shape[1]
  positive_range = np.ptp(positive, axis=1)
  negative_range = np.ptp(negative, axis=1)
  inner_is_negative = (positive_range >= negative_range)[:, None]
  inner = np.where(inner_is_negative, negative, positive)
  outer = np.where(inner_is_negative, positive, negative)
  width = np.minimum(positive_range, negative_range)
  top = inner.max(axis=1)
  num = int(round(2 * BUFFER * THRESHOLDS_PER_UNIT))
  step = 2 * BUFFER / (num - 1)
  right_start = top - BUFFER
  left_start = top - width - 2 * BUFFER
  inner_right = _grid_counts(inner, right_start, step, num, inclusive=True)
  outer_right = _grid_counts(outer, right_start, step, num, inclusive=True)
  inner_left = _grid_counts(inner, left_start, step, 2 * num - 1, inclusive=False)
  outer_left = _grid_counts(outer, left_start, step, 2 * num - 1, inclusive=False)
  # Code of (outer inside, inner inside) = (outer_right - outer_left, inner_right - inner_left),
  # each shifted by K so that empty intervals (negative differences) stay in range.
  side = 2 * num_models + 1
  right_code = (outer_right + num_models) * side + inner_right + num_models
  left_code = outer_left * side + inner_left
  best = np.full(positive.shape[0], -np.inf)
  for j in range(num):
    np.maximum(
      best, interval_table.take(right_code - left_code[:, j : j + num]).max(axis=1), out=best
    )
  return best


def per_example_epsilons(
  unlearned_confidences,
  retrained_confidences,
  *,
  delta: float = DELTA,
  epsilon_cap: float = EPSILON_CAP,
) -> np.ndarray:
  """Per-example epsilon of the NeurIPS 2023 challenge's threshold attacks.

  For each example: the positive side is the model set with the larger median confidence (the
  unlearned set on a tie). Thresholds: a single one, `c >= t` predicts positive, t over the pooled
  range at 100 per unit; and intervals `l <= c <= r` predicting the peakier set (see
  `_double_threshold_epsilons`). Each threshold gives max(log(1 - delta - FPR) - log FNR,
  log(1 - delta - FNR) - log FPR), floored at 0; thresholds with exactly one rate 0 are dropped,
  both 0 is perfect separation (infinite epsilon). The example's epsilon is the largest over both
  families, clipped to [0, epsilon_cap]; it is the cap outright if one set's range is below 1% of
  the other's.

  Where this differs from the published `metric.py`, and why:
  * Its `assert thr_eps` raises on any array of more than one surviving threshold; we implement
    the evident intent. Where no threshold survives at all (every one classifies one set without
    error: only for (near-)constant sets, or sets closer than the grid step), epsilon is 0: at the
    definition's resolution nothing tells them apart. The published code would stop there.
  * It sizes the interval rule's right-end grid as ceil(100 * (max_ - min_)), a difference that is
    4 in exact arithmetic but rounds to 400 or 401 thresholds from example to example (401 for
    about 3% of examples); we use 400.
  * Where a left end of the interval rule falls exactly on a sample, it decides whether that
    sample is inside pair by pair (each (right, left) pair recomputes the left end in float32);
    we decide it once per example from the shared left-end grid, which is the exact answer.
    Checked against `metric.py` on 21 synthetic cases (K = 8 to 512, 2,050 examples): F is
    identical; these two points change 0.03-0.4% of the per-example epsilons.
  * Rates are exact count ratios in float64 (it averages in float32 and takes float32 logs), and
    threshold positions match its linspace grids to rounding.
  * The 1%-range test is `smaller < 0.01 * larger`, so two constant sets are not capped, as there
    (0 / 0 is nan, which fails `< 0.01`).

  Args:
    unlearned_confidences: [K, N] logit-scaled confidences (see `logit_margin`) of K unlearned
      models.
    retrained_confidences: [K, N] the same for K retrained models.
    delta: the delta of the (epsilon, delta) estimate, in [0, 1/K).
    epsilon_cap: largest epsilon reported (the value of perfect separation), > 0.

  Returns:
    [N] float64 epsilons in [0, epsilon_cap].
  """
  unlearned = _as_per_model(unlearned_confidences, 'unlearned_confidences', 2)
  retrained = _as_per_model(retrained_confidences, 'retrained_confidences', 2)
  _check_same_shape(unlearned, retrained, 'unlearned_confidences', 'retrained_confidences')
  num_models = unlearned.shape[0]
  if not 0.0 <= delta < 1.0 / num_models:
    raise ValueError(f'delta must lie in [0, 1/K) = [0, {1.0 / num_models:g}); got {delta}.')
  if not epsilon_cap > 0.0:
    raise ValueError(f'epsilon_cap must be positive; got {epsilon_cap}.')

  unlearned, retrained = unlearned.T, retrained.T  # [N, K]: one row per example.
  retrained_is_positive = (np.median(retrained, axis=1) > np.median(unlearned, axis=1))[:, None]
  positive = np.where(retrained_is_positive, retrained, unlearned)
  negative = np.where(retrained_is_positive, unlearned, retrained)

  table = _epsilon_table(num_models, delta)
  interval_table = _interval_table(table)

  best = np.empty(positive.shape[0])
  for start in range(0, positive.shape[0], _BLOCK):
    block = slice(start, start + _BLOCK)
    best[block] = np.maximum(
      _single_threshold_epsilons(positive[block], negative[block], table),
      _double_threshold_epsilons(positive[block], negative[block], interval_table),
    )
  epsilons = np.clip(np.where(best == -np.inf, 0.0, best), 0.0, epsilon_cap)

  ranges = np.stack([np.ptp(positive, axis=1), np.ptp(negative, axis=1)])
  point_mass = ranges.min(axis=0) < MIN_RANGE_RATIO * ranges.max(axis=0)
  return np.where(point_mass, epsilon_cap, epsilons)


# ------------------------------------------------------------------------------- scores


def num_score_buckets(num_models: int) -> int:
  """Buckets that score with K models per side: those below ceil(log(K - 1)), 0.5 wide.

  Args:
    num_models: K, at least 2 (K = 2 gives no scoring bucket).

  Returns:
    2 * ceil(log(K - 1)): K = 3 -> 2, K = 8 -> 4, K = 32 -> 8, K = 512 -> 14.
  """
  if num_models < 2:
    raise ValueError(f'num_models must be at least 2; got {num_models}.')
  return int(math.ceil(math.log(num_models - 1)) / BUCKET_WIDTH)


def epsilon_points(epsilons, num_models: int) -> np.ndarray:
  """Bucket score of each epsilon: 2^-floor(eps / 0.5) if in a scoring bucket, else 0.

  Args:
    epsilons: per-example epsilons, >= 0.
    num_models: K, which decides how many buckets score (see `num_score_buckets`).

  Returns:
    float64 points in {0} u {2^-b : b < num_score_buckets(K)}, shaped like `epsilons`.
  """
  epsilons = np.asarray(epsilons, dtype=np.float64)
  if np.any(~(epsilons >= 0.0)):
    raise ValueError('epsilons must be non-negative and not nan.')
  bucket = np.floor(epsilons / BUCKET_WIDTH)
  return np.where(bucket < num_score_buckets(num_models), np.exp2(-bucket), 0.0)


def forgetting_quality_from_confidences(
  unlearned_confidences,
  retrained_confidences,
  *,
  delta: float = DELTA,
  epsilon_cap: float = EPSILON_CAP,
) -> ForgettingQuality:
  """The challenge's forgetting quality F from per-example logit-scaled confidences.

  Args:
    unlearned_confidences: [K, N_f] logit-scaled confidences of K unlearned models on D_f.
    retrained_confidences: [K, N_f] the same for K retrained models, K >= 3 (K = 2 makes F = 0
      whatever the models do).
    delta: see `per_example_epsilons`.
    epsilon_cap: see `per_example_epsilons`.

  Returns:
    ForgettingQuality(quality=F, num_models=K, epsilons, points).
  """
  unlearned = _as_per_model(unlearned_confidences, 'unlearned_confidences', 3)
  retrained = _as_per_model(retrained_confidences, 'retrained_confidences', 3)
  epsilons = per_example_epsilons(unlearned, retrained, delta=delta, epsilon_cap=epsilon_cap)
  num_models = unlearned.shape[0]
  points = epsilon_points(epsilons, num_models)
  return ForgettingQuality(float(points.mean()), int(num_models), epsilons, points)


def forgetting_quality(
  unlearned_logits,
  retrained_logits,
  labels,
  *,
  delta: float = DELTA,
  epsilon_cap: float = EPSILON_CAP,
) -> ForgettingQuality:
  """The challenge's forgetting quality F from the logits of both model sets on D_f.

  Args:
    unlearned_logits: [K, N_f, C] logits of K unlearned models on the forget set.
    retrained_logits: [K, N_f, C] logits of K retrained models on the same examples, K >= 3.
    labels: [N_f] integer labels.
    delta: see `per_example_epsilons`.
    epsilon_cap: see `per_example_epsilons`.

  Returns:
    ForgettingQuality(quality=F, num_models=K, epsilons, points).
  """
  unlearned, retrained = _margins_of(unlearned_logits, retrained_logits, labels)
  return forgetting_quality_from_confidences(
    unlearned, retrained, delta=delta, epsilon_cap=epsilon_cap
  )


def bootstrap_interval(
  points, *, num_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
  """Percentile bootstrap interval of F = mean(points) over resampled forget examples.

  The forget examples are resampled with replacement; the models stay fixed, so the interval
  says how much F depends on which examples were forgotten, not on which K models were trained.

  Args:
    points: [N_f] per-example bucket scores (`ForgettingQuality.points`).
    num_resamples: bootstrap resamples, >= 1.
    confidence: the interval's coverage, in (0, 1).
    seed: the resampling's seed.

  Returns:
    (low, high): the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of the resampled
    means.
  """
  points = np.asarray(points, dtype=np.float64)
  if points.ndim != 1 or points.size == 0 or not np.all(np.isfinite(points)):
    raise ValueError(
      f'points must be a non-empty 1-D array of finite numbers; got shape {points.shape}.'
    )
  if not (isinstance(num_resamples, (int, np.integer)) and num_resamples >= 1):
    raise ValueError(f'num_resamples must be a positive integer; got {num_resamples}.')
  if not 0.0 < confidence < 1.0:
    raise ValueError(f'confidence must lie in (0, 1); got {confidence}.')
  rng = np.random.default_rng(seed)
  means = np.empty(num_resamples)
  # In blocks, so the [block, N_f] index array stays small for any N_f.
  block = max(1, 2**20 // points.size)
  for start in range(0, num_resamples, block):
    size = min(block, num_resamples - start)
    means[start : start + size] = points[rng.integers(0, points.size, (size, points.size))].mean(1)
  low, high = np.quantile(means, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
  return float(low), float(high)


def challenge_score(
  quality: ForgettingQuality,
  *,
  retain_accuracy_unlearned: float,
  retain_accuracy_retrained: float,
  test_accuracy_unlearned: float,
  test_accuracy_retrained: float,
) -> ChallengeScore:
  """The challenge's final score F * RA_u / RA_r * TA_u / TA_r.

  Args:
    quality: the forgetting quality of the unlearned models.
    retain_accuracy_unlearned: RA_u, the mean over the K unlearned models of their D_r accuracy.
    retain_accuracy_retrained: RA_r, the same for the retrained models; > 0, same units as RA_u.
    test_accuracy_unlearned: TA_u, the mean test accuracy of the unlearned models.
    test_accuracy_retrained: TA_r, the same for the retrained models; > 0, same units as TA_u.

  Returns:
    ChallengeScore(score, forgetting_quality=F, num_models=K).
  """
  accuracies = {
    'retain_accuracy_unlearned': retain_accuracy_unlearned,
    'retain_accuracy_retrained': retain_accuracy_retrained,
    'test_accuracy_unlearned': test_accuracy_unlearned,
    'test_accuracy_retrained': test_accuracy_retrained,
  }
  for name, value in accuracies.items():
    if not (math.isfinite(value) and value >= 0.0):
      raise ValueError(f'{name} must be finite and non-negative; got {value}.')
    if name.endswith('retrained') and value == 0.0:
      raise ValueError(f'{name} is 0; the score divides by it.')
  score = (
    quality.quality
    * retain_accuracy_unlearned
    / retain_accuracy_retrained
    * test_accuracy_unlearned
    / test_accuracy_retrained
  )
  return ChallengeScore(float(score), quality.quality, quality.num_models)


# ------------------------------------------------------------------------------- KLOM


def _margins_of(unlearned_logits, retrained_logits, labels):
  unlearned = _as_logits(unlearned_logits, 'unlearned_logits')
  retrained = _as_logits(retrained_logits, 'retrained_logits')
  if unlearned.shape[1:] != retrained.shape[1:]:
    raise ValueError(
      f'unlearned_logits has shape {unlearned.shape} but retrained_logits has '
      f'{retrained.shape}; both need the same examples and classes.'
    )
  _as_labels(labels, unlearned.shape[1], unlearned.shape[2], 'labels')
  return logit_margin(unlearned, labels), logit_margin(retrained, labels)


def _histograms(values, low, high, num_bins):
  """[N, num_bins] counts of each row of `values` [N, K] in equal bins over [low, high]."""
  rows = values.shape[0]
  index = np.floor((values - low[:, None]) / (high - low)[:, None] * num_bins)
  # The top edge belongs to the last bin, as in np.histogram.
  index = np.clip(index, 0, num_bins - 1).astype(np.int64) + num_bins * np.arange(rows)[:, None]
  return np.bincount(index.ravel(), minlength=rows * num_bins).reshape(rows, num_bins)


def klom(
  unlearned_margins,
  retrained_margins,
  *,
  num_bins: int = KLOM_BINS,
  smoothing: float = KLOM_SMOOTHING,
  clip: float = KLOM_CLIP,
) -> np.ndarray:
  """Per-example KLOM: KL(unlearned || retrained) between histograms of margins over models.

  As in the authors' benchmark code (RoyRin/data-unlearning-bench; easydub/EasyDUB-code): margins
  clipped to [-clip, clip]; per example, `num_bins` equal bins spanning both samples (one bin of
  width 1 if they are all equal); p = unlearned histogram, q = retrained histogram; retrained bins
  that are empty where p > 0 get `smoothing` in place of 0. Then q is renormalised (as scipy's
  `entropy` in data-unlearning-bench does; EasyDUB leaves it unnormalised, which changes the value
  by at most log(1 + num_bins * smoothing), about 2e-4). So identical samples give exactly 0, and
  a p that falls only in bins where q is empty gives sum_b p_b log(p_b (1 + m * smoothing) /
  smoothing), m the number of such bins: log(1e5 + 1) = 11.51 for one bin.
  Difference: their `np.digitize` leaves the samples equal to the top edge out of the histogram;
  we put them in the last bin, as a histogram over the samples' range should.

  Args:
    unlearned_margins: [K_u, N] margins (see `logit_margin`) of K_u >= 2 unlearned models.
    retrained_margins: [K_r, N] margins of K_r >= 2 retrained models.
    num_bins: histogram bins per example, >= 1.
    smoothing: probability given to empty retrained bins, in (0, 1).
    clip: margins are clipped to [-clip, clip] first, > 0.

  Returns:
    [N] float64 KL divergences, >= 0; lower is better.
  """
  unlearned = _as_per_model(unlearned_margins, 'unlearned_margins', 2)
  retrained = _as_per_model(retrained_margins, 'retrained_margins', 2)
  if unlearned.shape[1] != retrained.shape[1]:
    raise ValueError(
      f'unlearned_margins has {unlearned.shape[1]} examples but retrained_margins '
      f'has {retrained.shape[1]}; both need the same examples.'
    )
  if not (isinstance(num_bins, (int, np.integer)) and num_bins >= 1):
    raise ValueError(f'num_bins must be a positive integer; got {num_bins}.')
  if not 0.0 < smoothing < 1.0:
    raise ValueError(f'smoothing must lie in (0, 1); got {smoothing}.')
  if not clip > 0.0:
    raise ValueError(f'clip must be positive; got {clip}.')
  unlearned = np.clip(unlearned, -clip, clip).T
  retrained = np.clip(retrained, -clip, clip).T
  low = np.minimum(unlearned.min(axis=1), retrained.min(axis=1))
  high = np.maximum(unlearned.max(axis=1), retrained.max(axis=1))
  high = np.where(high > low, high, low + 1.0)
  p = _histograms(unlearned, low, high, num_bins) / unlearned.shape[1]
  # In counts, so that q stays exactly counts / K_r where no bin needed smoothing.
  q_counts = _histograms(retrained, low, high, num_bins).astype(np.float64)
  q_counts = np.where(p > 0.0, np.maximum(q_counts, smoothing * retrained.shape[1]), q_counts)
  q = q_counts / q_counts.sum(axis=1, keepdims=True)
  with np.errstate(divide='ignore', invalid='ignore'):
    terms = np.where(p > 0.0, p * np.log(p / q), 0.0)
  return terms.sum(axis=1)


def klom_from_logits(unlearned_logits, retrained_logits, labels, **options) -> np.ndarray:
  """Per-example KLOM from logits [K_u, N, C] and [K_r, N, C] and labels [N]; see `klom`."""
  unlearned, retrained = _margins_of(unlearned_logits, retrained_logits, labels)
  return klom(unlearned, retrained, **options)


def klom_summary(values) -> KlomSummary:
  """Median and 95th percentile of per-example KLOM values (the paper reports both).

  Args:
    values: [N] per-example KLOM values of one set (forget, retain or validation).

  Returns:
    KlomSummary(median, p95).
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
    raise ValueError(
      f'values must be a non-empty 1-D array of finite numbers; got shape {values.shape}.'
    )
  median, p95 = np.percentile(values, [50.0, 95.0])
  return KlomSummary(float(median), float(p95))


def klom_report(sets: Mapping[str, tuple], **options) -> dict[str, KlomSummary]:
  """KLOM median and 95th percentile per set, e.g. {'forget': ..., 'retain': ..., 'val': ...}.

  Args:
    sets: name -> (unlearned_logits [K_u, N, C], retrained_logits [K_r, N, C], labels [N]).
    **options: passed to `klom` (num_bins, smoothing, clip).

  Returns:
    name -> KlomSummary(median, p95).
  """
  return {name: klom_summary(klom_from_logits(*arrays, **options)) for name, arrays in sets.items()}


# ------------------------------------------------------------------------------- relearn time


def relearn_time(
  forget_accuracies,
  target_accuracy,
  *,
  steps=None,
  max_steps: int | None = None,
  tolerance: float = 0.0,
) -> RelearnTime:
  """First step at which a relearning run's forget accuracy reaches the target.

  Args:
    forget_accuracies: [T] or [R, T]: the forget accuracy of each run measured at `steps`.
    target_accuracy: scalar or [R]: the accuracy to reach, usually the original model's on D_f.
    steps: [T] strictly increasing step numbers of the measurements; default 1..T (one
      measurement after each fine-tuning step).
    max_steps: the cap, >= 0; measurements after it are ignored. Default: the last of `steps`.
    tolerance: a run reaches the target when accuracy >= target - tolerance, >= 0.

  Returns:
    RelearnTime(steps, reached) of shape [] or [R]: never-reached runs get the cap and False.
  """
  accuracies = np.asarray(forget_accuracies, dtype=np.float64)
  if accuracies.ndim not in (1, 2) or accuracies.shape[-1] == 0:
    raise ValueError(
      f'forget_accuracies must have shape (T,) or (runs, T) with T >= 1; got shape '
      f'{accuracies.shape}.'
    )
  if np.any(np.isnan(accuracies)):
    raise ValueError('forget_accuracies contains nan.')
  num_measurements = accuracies.shape[-1]
  if steps is None:
    steps = np.arange(1, num_measurements + 1)
  steps = np.asarray(steps)
  if (
    steps.shape != (num_measurements,)
    or not np.issubdtype(steps.dtype, np.integer)
    or np.any(np.diff(steps) <= 0)
    or steps[0] < 0
  ):
    raise ValueError(
      f'steps must be {num_measurements} strictly increasing non-negative integers; got {steps!r}.'
    )
  cap = int(steps[-1]) if max_steps is None else max_steps
  if not (isinstance(cap, (int, np.integer)) and cap >= 0):
    raise ValueError(f'max_steps must be a non-negative integer; got {max_steps}.')
  target = np.asarray(target_accuracy, dtype=np.float64)
  if target.shape not in ((), accuracies.shape[:-1]) or not np.all(np.isfinite(target)):
    raise ValueError(
      f'target_accuracy must be finite, a scalar or of shape '
      f'{accuracies.shape[:-1]}; got shape {target.shape}.'
    )
  if not tolerance >= 0.0:
    raise ValueError(f'tolerance must be non-negative; got {tolerance}.')
  hit = (accuracies >= target[..., None] - tolerance) & (steps <= cap)
  reached = hit.any(axis=-1)
  first = steps[np.argmax(hit, axis=-1)]
  return RelearnTime(np.where(reached, first, cap).astype(np.int64), reached)


def relearn_summary(times: RelearnTime) -> RelearnSummary:
  """Mean and population std of relearn steps over runs (e.g. the K models of one method).

  Runs that never reached the target count at the cap, so with `num_reached < num_runs` the mean
  is a lower bound.

  Args:
    times: a `relearn_time` result.

  Returns:
    RelearnSummary(mean, std, num_reached, num_runs).
  """
  steps = np.atleast_1d(np.asarray(times.steps, dtype=np.float64))
  reached = np.atleast_1d(np.asarray(times.reached, dtype=bool))
  if steps.shape != reached.shape:
    raise ValueError(f'times.steps has shape {steps.shape} but times.reached has {reached.shape}.')
  return RelearnSummary(float(steps.mean()), float(steps.std()), int(reached.sum()), steps.size)
