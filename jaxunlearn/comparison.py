"""Which differences between methods are real, at the seeds run.

Run s of every method unlearns the same Original against Retrain s on the same split, so the
scores of two methods pair by seed: most of a method's spread over seeds is Retrain's, and it
cancels in the difference. Two methods differ when a two-sided paired t-test of their per-seed
scores rejects equal means at `LEVEL`, per pair, not adjusted for the number of pairs (with three
seeds an adjusted test separates next to nothing, so a single 'different' is weak evidence).

`tie_groups` marks the groups in the style of a compact letter display: methods that share a
letter cannot be told apart, methods with no letter in common differ, and letter a holds the method
with the best mean. `ranking_in_groups` says the same in one line. `transfer` checks a tuning
score against the reported one.
"""

from __future__ import annotations

import itertools
import math
import string
from collections.abc import Iterable, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.05
TEST = 'two-sided paired t-test over seeds'


def paired_p_value(a: Sequence[float], b: Sequence[float]) -> float:
  """The p-value of a two-sided paired t-test of mean(a - b) = 0 over the pairs where both are
  finite.

  Args:
    a: one method's score per seed.
    b: another's, at the same seeds.

  Returns:
    The p-value; 1 when every difference is zero, 0 when every difference is the same non-zero
    number (no spread: each seed says the same), nan with fewer than 2 finite pairs.
  """
  a, b = np.asarray(a, float), np.asarray(b, float)
  both = np.isfinite(a) & np.isfinite(b)
  d = a[both] - b[both]
  if d.size < 2:
    return math.nan
  spread = d.std(ddof=1)
  if spread == 0:
    return 1.0 if d.mean() == 0 else 0.0
  t = d.mean() / (spread / math.sqrt(d.size))
  return float(2 * stats.t.sf(abs(t), d.size - 1))


def seed_scores(
  per_seed: dict[str, list[dict]], score: str = 'AvgGap', exclude: Iterable[str] = ()
) -> dict[str, np.ndarray]:
  """{row: its `score` per seed} of the rows run on every seed and with at least 2 finite ones.

  Args:
    per_seed: {row: [scores of each seed run, in seed order]} (a results payload's per_seed).
    score: the score compared.
    exclude: rows left out (e.g. the reference rows).

  Returns:
    The rows with as many seeds as the row with the most (so position i is seed i of each), in
    the order of `per_seed`; none when that is fewer than 2.
  """
  rows = {row: runs for row, runs in per_seed.items() if row not in set(exclude)}
  seeds = max((len(runs) for runs in rows.values()), default=0)
  if seeds < 2:
    return {}
  out = {}
  for row, runs in rows.items():
    values = np.array([run.get(score, math.nan) for run in runs], float)
    if len(runs) == seeds and np.isfinite(values).sum() >= 2:
      out[row] = values
  return out


def differs(scores: dict[str, np.ndarray], level: float = LEVEL) -> dict[frozenset, bool]:
  """{pair of rows: whether they differ} over every pair of `scores` (`paired_p_value` below
  `level`; a pair with fewer than 2 common finite seeds cannot be told apart)."""
  out = {}
  for a, b in itertools.combinations(scores, 2):
    p = paired_p_value(scores[a], scores[b])
    out[frozenset((a, b))] = bool(p < level)  # nan < level is False: not told apart
  return out


def by_mean(scores: dict[str, np.ndarray]) -> list[str]:
  """The rows from the lowest mean score to the highest (finite seeds only)."""
  return sorted(scores, key=lambda row: np.nanmean(scores[row]))


def tie_groups(scores: dict[str, np.ndarray], level: float = LEVEL) -> dict[str, str]:
  """The letters of a compact letter display (insert-absorb): rows sharing a letter cannot be
  told apart; any two rows that differ share none.

  Args:
    scores: {row: score per seed} (`seed_scores`); lower is better.
    level: the level of each paired test.

  Returns:
    {row: its letters}, letter a for the group of the row with the lowest mean, then by the best
    mean in each group.
  """
  order = by_mean(scores)
  rank = {row: i for i, row in enumerate(order)}
  columns = [set(order)] if order else []
  for pair, different in differs(scores, level).items():
    if not different:
      continue
    a, b = sorted(pair, key=rank.get)
    split = []
    for column in columns:
      split += [column - {a}, column - {b}] if {a, b} <= column else [column]
    # Absorb: a column inside another says nothing the larger one does not.
    columns = [
      c
      for i, c in enumerate(split)
      if c and not any(c < d or (c == d and j < i) for j, d in enumerate(split))
    ]
  columns.sort(key=lambda c: sorted(rank[row] for row in c))
  letters = {row: '' for row in order}
  for i, column in enumerate(columns):
    for row in sorted(column, key=rank.get):
      letters[row] += _letter(i)
  return letters


def _letter(i: int) -> str:
  return string.ascii_lowercase[i] if i < 26 else f'({i + 1})'


def ranked_groups(scores: dict[str, np.ndarray], level: float = LEVEL) -> list[list[str]]:
  """Rows in ranked groups: each the best remaining row (lowest mean) and every remaining row
  the test cannot tell from it."""
  pairs = differs(scores, level)
  remaining, groups = by_mean(scores), []
  while remaining:
    best = remaining[0]
    group = [row for row in remaining if row == best or not pairs[frozenset((best, row))]]
    groups.append(group)
    remaining = [row for row in remaining if row not in group]
  return groups


def ranking_in_groups(
  scores: dict[str, np.ndarray], level: float = LEVEL, score: str = 'Avg. Gap'
) -> str:
  """One line ranking the rows in `ranked_groups`, e.g. 'By Avg. Gap (lower is better; ...):
  tied first: a 0.86, b 0.90; then: c 3.79.' ('' without rows)."""
  groups = ranked_groups(scores, level)
  if not groups:
    return ''
  parts = []
  for i, group in enumerate(groups):
    head = 'first' if i == 0 else 'then'
    head = f'tied {head}' if len(group) > 1 else head
    parts.append(f'{head}: ' + ', '.join(f'{r} {np.nanmean(scores[r]):.2f}' for r in group))
  seeds = max(len(v) for v in scores.values())
  return (
    f'By {score} (lower is better; groups by a {TEST} at level {level:g}, {seeds} seeds): '
    + '; '.join(parts)
    + '.'
  )


def transfer(tuning: dict[str, float], summary: dict[str, dict], score: str = 'AvgGap') -> dict:
  """Whether each method's tuning score carries over to its reported score.

  Args:
    tuning: {method: its score on the tuning split (the mean over the tuning seeds)}.
    summary: the reported rows ({row: {score: {'mean', 'std', 'n'}}}).
    score: the score compared.

  Returns:
    {method: {'tuning', 'mean', 'std', 'outside'}} for the methods in both: `outside` is True when
    the reported mean lies outside tuning ± 2 reported stds (decided only with 2 seeds or more;
    None below).
  """
  out = {}
  for row, value in tuning.items():
    reported = summary.get(row, {}).get(score)
    if reported is None:
      continue
    outside = None
    if reported['n'] >= 2:
      outside = bool(abs(reported['mean'] - value) > 2 * reported['std'])
    out[row] = {
      'tuning': value,
      'mean': reported['mean'],
      'std': reported['std'],
      'outside': outside,
    }
  return out
