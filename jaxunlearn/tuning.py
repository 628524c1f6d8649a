"""The tuning rule: the same budget for every method, winning edges pushed out, a choice over seeds.

Each method tunes every knob it declares (`Method.tune`: dotted fields of its config; '1-NAME'
scales 1 - NAME) against Retrain by Avg. Gap on a held-out split, starting from the config the
study would run it with (the preset of the forget kind and dataset, with the flags on top; where
that is a tuned preset, the one its tuning started from, so a record reproduces from its command):

1. Grid (`make_search`). With p multipliers and K the most knobs any registered method declares,
   every method gets p**K settings: a method with k knobs gets n = p**(K/k) values per knob, its
   multipliers with (n - 1)/(p - 1) - 1 geometric steps inserted between neighbours (`refine`;
   with 0.3, 1, 3 and K = 2 a one-knob method gets 9 values from 0.3 to 3 times its default, a
   two-knob method 3 x 3). A value is the default (1 - default for '1-NAME') times a multiplier;
   one past a closed bound of the field's `Rule` is moved onto the bound, one past an open bound
   halfway from the default to it; integers are rounded, and one the method's config refuses
   (SCRUB's msteps above its epochs) moves back towards the default to the nearest it allows.
   Repeats are dropped and the grid is topped up to n values by rule 3's step on the side with
   room. A combination the config refuses makes the method's count differ: it is refused before
   any run (`make_search`, `check_budgets`).
2. Successive halving (`halving_runs`). Every setting runs on the first tuning seed; the best
   third of the settings (ceil(m / 3) of the m run, by that score) runs on every other tuning
   seed. The choice (`choice`) is the setting run on every tuning seed with the smallest mean
   Avg. Gap over them. Ties go to the setting nearest the defaults (sum of |log ratio| of the
   scaled values); a diverged run scores +inf.
3. Edges (`extend`). When a knob's value in the choice is the smallest or largest of its grid and
   the grid can move that way, the grid gets one more value on that side (its outermost
   geometric step continued; onto a closed bound, halfway to an open one), crossed with every
   value of the other knobs; the new settings run by rule 2 and the choice is made again. An
   extension is made only when the most runs it can take (its settings on every seed, and the
   settings it can pull into the best third on the other seeds) fit in the runs left.
4. The same number of runs (`runs_per_method`, by default twice rule 2's count on the grid:
   24 for 9 settings and 2 seeds). While runs are left and no edge can move, they go first to
   the settings next in line by their first-seed score, on the seeds they lack (one setting at a
   time, the choice made again after each, so a new choice on an edge is extended), then to
   midpoints (`midpoint`): on the knob and side where the choice's neighbouring setting scores
   best, the geometric midpoint between the two values, crossed with the other knobs' values.
   Every method ends with exactly `runs_per_method` runs; the last ones may not complete a
   setting (only settings run on every seed are chosen), and a method that cannot spend them (no
   value left to try) is refused (`check_spent`). The record says where each choice sits on its grid
   (`edges`: inside, at a bound, or stopped by the run budget) and counts the grid's, the
   extensions' and the midpoints' runs (`budget`).

`run_searches` drives rules 2-4 with a function that runs one setting on one seed;
`experiments/tune.py` gives it the runs of a `Study`. `merge_results` and `merge_tuning` keep
the choices and rows of methods not tuned again (``--keep_from``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from jaxunlearn import metrics
from jaxunlearn.config import Config, ConfigError, Rule, field_rule, get_field, replace_field
from jaxunlearn.config import validate as validate_config
from jaxunlearn.methods import registry
from jaxunlearn.report import REFERENCE_ROWS
from jaxunlearn.unlearn import summarise

COMPLEMENT = '1-'
RULE = (
  'equal runs per method: p**K grid settings, successive halving over the tuning seeds, edges '
  'extended, the runs left to the next-best settings and to midpoints around the choice'
)
DIGITS = 3  # significant digits of a scaled quantity: grids read 0.00405, not 0.0040536

Setting = tuple  # one value per knob, in the method's knob order


@dataclasses.dataclass(frozen=True)
class Knob:
  """A tuned field of a method's config.

  Attributes:
    name: as the method declares it ('optimizer.lr', or '1-beta' to scale 1 - beta).
    default: its value in the config the method would run with.
    rule: what the field allows (`jaxunlearn.config.Rule`).
    allows: whether the method's config, at its other values, accepts a value of this field.
  """

  name: str
  default: float | int
  rule: Rule
  allows: Callable[[Any], bool] = dataclasses.field(compare=False, repr=False)

  @property
  def field(self) -> str:
    return self.name.removeprefix(COMPLEMENT)

  @property
  def complement(self) -> bool:
    return self.name.startswith(COMPLEMENT)

  def scaled(self, value) -> float:
    """The quantity the multipliers scale: the value, or 1 - value for '1-NAME'."""
    return 1.0 - value if self.complement else float(value)

  def value(self, scaled: float):
    """The field's value of a scaled quantity, rounded to DIGITS significant digits (integers:
    to the nearest)."""
    if self.rule.kind == 'int':
      return int(round(1.0 - scaled if self.complement else scaled))
    scaled = float(f'{scaled:.{DIGITS}g}')
    value = 1.0 - scaled if self.complement else scaled
    return float(f'{value:.12g}')  # no float noise (1 - 0.012 is 0.988)

  def scaled_bounds(self) -> tuple[tuple[float | None, bool], tuple[float | None, bool]]:
    """((low, open), (high, open)) of the scaled quantity."""
    r = self.rule
    if self.complement:
      return (
        (None if r.high is None else 1.0 - r.high, r.high_open),
        (None if r.low is None else 1.0 - r.low, r.low_open),
      )
    return (r.low, r.low_open), (r.high, r.high_open)


def refine(multipliers: Sequence[float], size: int) -> list[float]:
  """`size` multipliers: the sorted `multipliers` with geometric steps inserted evenly between
  neighbours.

  Args:
    multipliers: p distinct positive numbers.
    size: how many to return; (size - 1) must be a multiple of (p - 1).

  Returns:
    Ascending multipliers, the given ones among them.
  """
  ms = sorted(multipliers)
  steps = (size - 1) // (len(ms) - 1)
  out = [a * (b / a) ** (i / steps) for a, b in itertools.pairwise(ms) for i in range(steps)]
  return out + [ms[-1]]


def values_per_knob(num_multipliers: int, num_knobs: int, max_knobs: int) -> int:
  """The n with n**num_knobs = num_multipliers**max_knobs settings that `refine` can make.

  Raises:
    ConfigError: no such n (e.g. 3 multipliers, 2 knobs among methods with up to 3).
  """
  total = num_multipliers**max_knobs
  n = round(total ** (1 / num_knobs))
  if n**num_knobs != total or (n - 1) % (num_multipliers - 1):
    raise ConfigError(
      f'--multipliers: {num_multipliers} multipliers give every method {total} settings, which '
      f'a method with {num_knobs} knobs cannot split into equal geometric grids; give another '
      'number of multipliers.'
    )
  return n


def parse_multipliers(values: Sequence[str], flag: str = '--multipliers') -> list[float]:
  """At least two distinct positive numbers, ascending."""
  try:
    ms = sorted({float(v) for v in values})
  except ValueError:
    ms = []
  if len(ms) < 2 or ms[0] <= 0 or not all(map(math.isfinite, ms)):
    raise ConfigError(
      f'{flag}={",".join(values)}: give at least two distinct positive numbers, e.g. 0.3,1,3.'
    )
  return ms


def place(knob: Knob, scaled: float, toward: float):
  """The value nearest `scaled` that the knob allows, on the way back to `toward` (a scaled
  quantity it allows): past a closed bound the bound, past an open one halfway from `toward`;
  an integer refused by the config steps back towards `toward`. None if there is none (a float
  the config refuses)."""
  (low, low_open), (high, high_open) = knob.scaled_bounds()
  if high is not None and (scaled > high or (high_open and scaled >= high)):
    scaled = (toward + high) / 2 if high_open else high
  if low is not None and (scaled < low or (low_open and scaled <= low)):
    scaled = (toward + low) / 2 if low_open else low
  if knob.rule.kind != 'int':
    value = knob.value(scaled)
    return value if knob.allows(value) else None
  value, end = int(round(scaled)), int(round(toward))
  sign = 1 if end > value else -1
  while True:
    if knob.allows(value):
      return value
    if value == end:
      return None
    value += sign


def step(knob: Knob, axis: Sequence, side: str, fallback_ratio: float):
  """The next value beyond the `side` ('low' or 'high', of the scaled quantity) edge of `axis`
  (values ascending in the scaled quantity), at the axis's outermost geometric step there
  (`fallback_ratio` or its inverse when the axis has no such step); None at a bound."""
  scaled = [knob.scaled(v) for v in axis]
  if side == 'high':
    edge, ratio = scaled[-1], fallback_ratio
    if len(scaled) > 1 and scaled[-2] > 0:
      ratio = scaled[-1] / scaled[-2]
  else:
    edge, ratio = scaled[0], 1 / fallback_ratio
    if len(scaled) > 1:
      ratio = scaled[0] / scaled[1]
  raw = edge * ratio
  if knob.rule.kind == 'int' and int(round(raw)) == int(round(edge)):
    raw = edge + (1 if side == 'high' else -1)
  value = place(knob, raw, edge)
  if value is None or value in axis:
    return None
  return value


def knob_grid(knob: Knob, multipliers: Sequence[float], size: int) -> tuple:
  """The knob's `size` values, ascending in its scaled quantity (rule 1 of the module docstring).

  Raises:
    ConfigError: the default is not positive (nothing to scale), or `size` distinct values do
      not fit in what the field allows.
  """
  start = knob.scaled(knob.default)
  if start <= 0:
    raise ConfigError(
      f'{knob.name}: its default {knob.default} gives {start:g} to scale; the tuning rule '
      'needs a positive quantity.'
    )
  raw = [start * m for m in refine(multipliers, size)]
  values = {place(knob, r, start) for r in raw} - {None}
  axis = sorted(values, key=knob.scaled)
  lost_high = sum(r > start for r in raw) - sum(knob.scaled(v) > start for v in axis)
  lost_low = sum(r < start for r in raw) - sum(knob.scaled(v) < start for v in axis)
  sides = ('low', 'high') if lost_high >= lost_low else ('high', 'low')
  span = max(multipliers) / min(multipliers)
  while len(axis) < size:
    new = next((v for v in (step(knob, axis, s, span) for s in sides) if v is not None), None)
    if new is None:
      raise ConfigError(
        f'{knob.name}: only {len(axis)} distinct values fit ({knob.rule.describe()}); the '
        f'tuning rule gives every knob of this method {size}.'
      )
    axis = sorted([*axis, new], key=knob.scaled)
  return tuple(axis)


@dataclasses.dataclass(frozen=True)
class Search:
  """One method's tuning so far.

  Attributes:
    method: its name.
    base: the config it would run with; the knobs' defaults come from it.
    knobs: its tuned knobs, in declared order.
    axes: each knob's values so far, ascending in its scaled quantity.
    grid: the axes before any extension (their product is the equal-budget grid).
    scores: {setting: {seed: Avg. Gap}} of every run so far (nan: diverged).
    ratios: each knob's fallback step ratio (the span of the multipliers).
  """

  method: str
  base: Config
  knobs: tuple[Knob, ...]
  axes: tuple[tuple, ...]
  grid: tuple[tuple, ...]
  scores: Mapping[Setting, Mapping[int, float]]
  ratios: tuple[float, ...]


def make_knob(method: str, base: Config, name: str) -> Knob:
  """The knob `name` of `method`, at its value in `base`."""
  cls = registry.get(method).config
  field = name.removeprefix(COMPLEMENT)
  path = f'--config.method.{method}'

  def allows(value) -> bool:
    try:
      validate_config(replace_field(base, field, value), path)
    except ConfigError:
      return False
    return True

  rule = field_rule(cls, field)
  if name.startswith(COMPLEMENT) and rule.kind != 'float':
    raise ValueError(f'{method}: the knob {name!r} scales 1 - {field}, which needs a float field')
  return Knob(name, get_field(base, field), rule, allows)


def make_search(method: str, base: Config, multipliers: Sequence[float], max_knobs: int) -> Search:
  """The grid of `method` from its config `base` (rule 1 of the module docstring).

  Args:
    method: a registered method.
    base: its config (the one the study would run).
    multipliers: from `parse_multipliers`.
    max_knobs: the most knobs any registered method declares (K).

  Returns:
    A `Search` with no runs yet.

  Raises:
    ConfigError: the grid does not fit the knob's rules, or the config refuses one of its
      combinations (the method would run fewer settings than the others).
  """
  knobs = tuple(make_knob(method, base, name) for name in registry.get(method).tune)
  size = values_per_knob(len(multipliers), len(knobs), max_knobs)
  try:
    axes = tuple(knob_grid(knob, multipliers, size) for knob in knobs)
  except ConfigError as error:
    raise ConfigError(f'--config.method.{method}: {error}') from None
  span = max(multipliers) / min(multipliers)
  search = Search(method, base, knobs, axes, axes, {}, (span,) * len(knobs))
  for setting in settings(search):
    try:
      config_of(search, setting)
    except ConfigError as error:
      raise ConfigError(
        f'--config.method.{method}: its config refuses the grid setting {describe(search, setting)}'
        f' ({error}), so it would run fewer than {size ** len(knobs)} settings; change the '
        'config or --multipliers.'
      ) from None
  return search


def max_knobs() -> int:
  """K: the most knobs any registered method declares."""
  return max(len(m.tune) for m in registry.methods().values())


def settings(search: Search, axes: tuple[tuple, ...] | None = None) -> list[Setting]:
  """Every combination of the axes (default: the search's), first knob slowest."""
  return list(itertools.product(*(search.axes if axes is None else axes)))


def values(search: Search, setting: Setting) -> dict:
  """{field: value} of a setting."""
  return {k.field: v for k, v in zip(search.knobs, setting)}


def describe(search: Search, setting: Setting) -> str:
  return ', '.join(f'{f}={v:g}' for f, v in values(search, setting).items())


def config_of(search: Search, setting: Setting) -> Config:
  """The validated config of a setting (the base with the knobs' values)."""
  config = search.base
  for knob, value in zip(search.knobs, setting):
    config = replace_field(config, knob.field, value)
  return validate_config(config, f'--config.method.{search.method}')


def distance(search: Search, setting: Setting) -> float:
  """How far a setting lies from the defaults: sum over knobs of |log ratio| of the scaled
  quantity (ties go to the nearest)."""
  return sum(
    abs(math.log(max(k.scaled(v), 1e-12) / max(k.scaled(k.default), 1e-12)))
    for k, v in zip(search.knobs, setting)
  )


def mean_score(search: Search, setting: Setting, seeds: Sequence[int]) -> float:
  """The mean Avg. Gap of a setting over those of `seeds` it ran on (+inf if one diverged,
  nan if it ran on none)."""
  gaps = [search.scores.get(setting, {}).get(s) for s in seeds]
  gaps = [math.inf if math.isnan(g) else g for g in gaps if g is not None]
  return sum(gaps) / len(gaps) if gaps else math.nan


def ranked(search: Search, seeds: Sequence[int]) -> list[Setting]:
  """The settings run on the first seed, best first by that score (ties: nearest the defaults)."""
  run = [s for s in settings(search) if seeds[0] in search.scores.get(s, {})]
  return sorted(run, key=lambda s: (mean_score(search, s, seeds[:1]), distance(search, s)))


def finalists(search: Search, seeds: Sequence[int]) -> list[Setting]:
  """The best third (ceil(m / 3) of the m settings run on the first seed), by that score."""
  run = ranked(search, seeds)
  return run[: math.ceil(len(run) / 3)]


def missing_seeds(search: Search, setting: Setting, seeds: Sequence[int]) -> list[int]:
  return [seed for seed in seeds if seed not in search.scores.get(setting, {})]


def halving_runs(search: Search, seeds: Sequence[int]) -> list[tuple[Setting, int]]:
  """The (setting, seed) runs rule 2 asks for now: every setting on the first seed, then the
  finalists on the other seeds; [] when the choice can be made."""
  missing = [(s, seeds[0]) for s in settings(search) if seeds[0] not in search.scores.get(s, {})]
  if missing:
    return missing
  return [(s, seed) for s in finalists(search, seeds) for seed in missing_seeds(search, s, seeds)]


def complete(search: Search, seeds: Sequence[int]) -> list[Setting]:
  """The settings run on every tuning seed."""
  return [s for s in settings(search) if not missing_seeds(search, s, seeds)]


def choice(search: Search, seeds: Sequence[int]) -> Setting:
  """The setting run on every seed with the smallest mean Avg. Gap over them (ties: nearest the
  defaults)."""
  return min(
    complete(search, seeds), key=lambda s: (mean_score(search, s, seeds), distance(search, s))
  )


def record(search: Search, setting: Setting, seed: int, gap: float) -> Search:
  """The search with the Avg. Gap of `setting` at `seed`."""
  scores = {s: dict(by_seed) for s, by_seed in search.scores.items()}
  scores.setdefault(setting, {})[seed] = float(gap)
  return dataclasses.replace(search, scores=scores)


def runs(search: Search) -> int:
  """How many runs the search has made."""
  return sum(len(by_seed) for by_seed in search.scores.values())


def minimum_runs(search: Search, seeds: Sequence[int]) -> int:
  """Rule 2's runs on the grid: every setting once, the best third on the other seeds."""
  m = len(settings(search, search.grid))
  return m + math.ceil(m / 3) * (len(seeds) - 1)


def extension_cost(search: Search, added: int, seeds: Sequence[int]) -> int:
  """The most runs an extension adding `added` settings can take under rule 2: the new settings
  on the first seed, and on the other seeds those of the grown best third not yet run there (new
  settings, or settings the larger third pulls in; the present third has run on every seed)."""
  m = len(ranked(search, seeds))
  now, grown = math.ceil(m / 3), math.ceil((m + added) / 3)
  return added + (len(seeds) - 1) * max(min(added, grown), grown - now)


def _moves(
  search: Search, chosen: Setting, seeds: Sequence[int], runs_left: int
) -> list[tuple[int, str, str]]:
  """(knob index, side, what stops it or '') of every chosen value on an edge of its axis."""
  out = []
  for i, (knob, axis) in enumerate(zip(search.knobs, search.axes)):
    for side, edge in (('low', axis[0]), ('high', axis[-1])):
      if chosen[i] != edge:
        continue
      new = step(knob, axis, side, search.ratios[i])
      added = math.prod(len(a) for j, a in enumerate(search.axes) if j != i)
      if new is None:
        out.append((i, side, 'bound'))
      elif extension_cost(search, added, seeds) > runs_left:
        out.append((i, side, 'run budget'))
      else:
        out.append((i, side, ''))
  return out


def _with_value(search: Search, i: int, value) -> Search:
  """The search with `value` added to the axis of knob `i` (kept ascending)."""
  axis = tuple(sorted({*search.axes[i], value}, key=search.knobs[i].scaled))
  return dataclasses.replace(search, axes=search.axes[:i] + (axis,) + search.axes[i + 1 :])


def extend(search: Search, seeds: Sequence[int], runs_left: int) -> Search | None:
  """The search with one more value on the axis of the first knob whose chosen value sits on a
  movable edge, where the extension fits in `runs_left` (rule 3); None when there is none."""
  chosen = choice(search, seeds)
  for i, side, stop in _moves(search, chosen, seeds, runs_left):
    if not stop:
      return _with_value(search, i, step(search.knobs[i], search.axes[i], side, search.ratios[i]))
  return None


def widening_runs(search: Search, seeds: Sequence[int]) -> list[tuple[Setting, int]]:
  """The runs that complete the next setting in line by its first-seed score (rule 4)."""
  for setting in ranked(search, seeds):
    missing = missing_seeds(search, setting, seeds)
    if missing:
      return [(setting, seed) for seed in missing]
  return []


def midpoint(search: Search, seeds: Sequence[int], runs_left: int) -> Search | None:
  """The search with a midpoint added (rule 4): between the choice's value of a knob and its
  neighbour on that knob's axis, on the side whose neighbouring setting scores best over the
  seeds (ties: the wider gap in log scale, then the first knob); one whose new settings do not
  all fit in `runs_left` only when no other does. None when no knob has room for one."""
  chosen = choice(search, seeds)
  done = set(complete(search, seeds))
  options = []
  for i, (knob, axis) in enumerate(zip(search.knobs, search.axes)):
    at = axis.index(chosen[i])
    for j in (at - 1, at + 1):
      if not 0 <= j < len(axis):
        continue
      a, b = knob.scaled(chosen[i]), knob.scaled(axis[j])
      value = place(knob, math.sqrt(a * b) if a > 0 and b > 0 else (a + b) / 2, a)
      if value is None or value in axis:
        continue
      neighbour = chosen[:i] + (axis[j],) + chosen[i + 1 :]
      score = mean_score(search, neighbour, seeds) if neighbour in done else math.inf
      added = math.prod(len(x) for k, x in enumerate(search.axes) if k != i)
      gap = abs(math.log(max(a, 1e-12) / max(b, 1e-12)))
      options.append((added > runs_left, score, -gap, i, j, value))
  if not options:
    return None
  *_, i, _, value = min(options)
  return _with_value(search, i, value)


def next_step(
  search: Search, seeds: Sequence[int], runs_per_method: int
) -> tuple[Search, list[tuple[Setting, int]]]:
  """What the rule does next for one method: the search (its axes grown by an extension or a
  midpoint) and the runs to make, at most the runs left; no runs when the method is done."""
  left = runs_per_method - runs(search)
  if left <= 0:
    return search, []
  halving = halving_runs(search, seeds)
  if halving:
    return search, halving[:left]
  grown = extend(search, seeds, left)
  widening = [] if grown is not None else widening_runs(search, seeds)
  if grown is None and not widening:
    grown = midpoint(search, seeds, left)
  if grown is not None:
    return grown, halving_runs(grown, seeds)[:left]
  return search, widening[:left]


def edges(search: Search, seeds: Sequence[int], runs_per_method: int) -> dict[str, str]:
  """{field: 'inside', or where on its grid the choice sits and what stopped the grid there}."""
  chosen = choice(search, seeds)
  out = {k.field: 'inside' for k in search.knobs}
  for i, side, stop in _moves(search, chosen, seeds, runs_per_method - runs(search)):
    knob = search.knobs[i]
    lowest = (side == 'low') != knob.complement
    out[knob.field] = f'{"lowest" if lowest else "highest"} value ({stop or "movable"})'
  return out


def kind(search: Search, setting: Setting) -> str:
  """'grid', 'extension' (a value beyond the grid's span) or 'midpoint' (a value inside it)."""
  if all(v in axis for v, axis in zip(setting, search.grid)):
    return 'grid'
  beyond = any(
    not min(map(k.scaled, axis)) <= k.scaled(v) <= max(map(k.scaled, axis))
    for k, v, axis in zip(search.knobs, setting, search.grid)
  )
  return 'extension' if beyond else 'midpoint'


def budget(search: Search, runs_per_method: int) -> dict[str, int]:
  """The run budget, and the settings and runs of the grid, its extensions and its midpoints."""
  out = {'runs_per_method': runs_per_method, 'runs': runs(search)}
  for name in ('grid', 'extension', 'midpoint'):
    of_kind = [by_seed for s, by_seed in search.scores.items() if kind(search, s) == name]
    out[f'{name}_settings'] = len(of_kind)
    out[f'{name}_runs'] = sum(map(len, of_kind))
  return out


def check_budgets(searches: Mapping[str, Search]) -> None:
  """Raises ConfigError unless every method has the same number of grid settings."""
  counts = {name: len(settings(s, s.grid)) for name, s in searches.items()}
  if len(set(counts.values())) > 1:
    listed = ', '.join(f'{name} {n}' for name, n in counts.items())
    raise ConfigError(
      f'--config.methods: the methods would tune unequal numbers of settings ({listed}); the '
      'tuning rule gives every method the same budget.'
    )


def check_runs_per_method(
  searches: Mapping[str, Search], seeds: Sequence[int], runs_per_method: int
) -> None:
  """Raises ConfigError unless `runs_per_method` covers rule 2 on every method's grid."""
  needed = max(minimum_runs(s, seeds) for s in searches.values())
  if runs_per_method < needed:
    raise ConfigError(
      f'--runs_per_method={runs_per_method}: successive halving on the grid takes {needed} runs '
      f'per method; give at least {needed}.'
    )


def check_spent(searches: Mapping[str, Search], runs_per_method: int) -> None:
  """Raises ConfigError unless every method made exactly `runs_per_method` runs: a method that
  could not spend them is not reported beside the others."""
  short = {name: runs(s) for name, s in searches.items() if runs(s) != runs_per_method}
  if short:
    listed = ', '.join(f'{name} {n}' for name, n in short.items())
    raise ConfigError(
      f'--runs_per_method={runs_per_method}: {listed} run(s) only, with no value left to try '
      'within their rules; give fewer runs per method or other --multipliers.'
    )


def check_seeds(seeds: Sequence[int]) -> None:
  """Raises ConfigError unless there are at least two distinct tuning seeds."""
  if len(seeds) < 2 or len(set(seeds)) != len(seeds):
    raise ConfigError(
      f'--tune_seeds={",".join(map(str, seeds))}: give at least two distinct seeds.'
    )


def default_runs_per_method(searches: Mapping[str, Search], seeds: Sequence[int]) -> int:
  """Twice rule 2's runs on the grid (24 for 9 settings and 2 seeds)."""
  return 2 * max(minimum_runs(s, seeds) for s in searches.values())


def run_searches(
  searches: Mapping[str, Search],
  seeds: Sequence[int],
  run: Callable[[str, str, int, Config], float],
  runs_per_method: int | None = None,
) -> dict[str, Search]:
  """Runs rules 2-4 to the end for every method.

  Args:
    searches: {method: its search} (`make_search`), with equal budgets (`check_budgets`).
    seeds: the tuning seeds, at least 2; the first scores every setting.
    run: ``run(method, row, seed, config) -> Avg. Gap`` of one run (nan: diverged), `row`
      naming the setting (`row_name`).
    runs_per_method: every method's number of runs (None: `default_runs_per_method`).

  Returns:
    {method: its finished search}, each with exactly `runs_per_method` runs.

  Raises:
    ConfigError: too few runs for rule 2, or a method that cannot spend them (`check_spent`).
  """
  check_seeds(seeds)
  check_budgets(searches)
  if runs_per_method is None:
    runs_per_method = default_runs_per_method(searches, seeds)
  check_runs_per_method(searches, seeds, runs_per_method)
  searches = dict(searches)
  while True:
    pending = []
    for name, search in searches.items():
      searches[name], todo = next_step(search, seeds, runs_per_method)
      pending += [(name, setting, seed) for setting, seed in todo]
    if not pending:
      check_spent(searches, runs_per_method)
      return searches
    for name, setting, seed in sorted(pending, key=lambda p: p[2]):
      search = searches[name]
      gap = run(name, row_name(search, setting), seed, config_of(search, setting))
      searches[name] = record(searches[name], setting, seed, gap)


def search_record(search: Search, seeds: Sequence[int], runs_per_method: int) -> dict:
  """What tuning.json says of one method's finished search: its knobs, defaults, grids, every
  trial (per seed, its mean and its kind), the choice and its tuning score, where the choice
  sits on its grids (`edges`) and the budget."""
  chosen = choice(search, seeds)
  return {
    'knobs': [k.name for k in search.knobs],
    'defaults': {k.field: k.default for k in search.knobs},
    'grid': {k.field: list(a) for k, a in zip(search.knobs, search.grid)},
    'axes': {k.field: list(a) for k, a in zip(search.knobs, search.axes)},
    'trials': [
      {
        'row': row_name(search, s),
        'values': values(search, s),
        'per_seed': {str(seed): gap for seed, gap in sorted(by_seed.items())},
        'AvgGap': mean_score(search, s, seeds),
        'kind': kind(search, s),
      }
      for s, by_seed in search.scores.items()
    ],
    'chosen': values(search, chosen),
    'tuning_score': mean_score(search, chosen, seeds),
    'edges': edges(search, seeds, runs_per_method),
    'budget': budget(search, runs_per_method),
  }


def rule_record(
  searches: Mapping[str, Search],
  seeds: Sequence[int],
  *,
  multipliers: Sequence[str],
  split_seed: int,
  runs_per_method: int,
) -> dict:
  """The `SAME_RULE` fields of a tuning about to run (`check_budgets` first)."""
  check_budgets(searches)
  return {
    'rule': RULE,
    'multipliers': list(multipliers),
    'settings_per_method': max(len(settings(s, s.grid)) for s in searches.values()),
    'runs_per_method': runs_per_method,
    'tune_split_seed': split_seed,
    'tune_seeds': list(seeds),
  }


def tuning_record(
  searches: Mapping[str, Search],
  seeds: Sequence[int],
  *,
  multipliers: Sequence[str],
  split_seed: int,
  runs_per_method: int,
) -> dict:
  """The tuning.json payload of finished searches: the rule and its budget (`SAME_RULE`), and
  each method's `search_record`."""
  rule = rule_record(
    searches, seeds, multipliers=multipliers, split_seed=split_seed, runs_per_method=runs_per_method
  )
  return {
    **rule,
    'methods': {
      name: search_record(search, seeds, runs_per_method) for name, search in searches.items()
    },
  }


def row_name(search: Search, setting: Setting) -> str:
  """The table row of a trial: 'METHOD field=value, ...'."""
  return f'{search.method} {describe(search, setting)}'


def tuning_scores(tuning: dict) -> dict[str, float]:
  """{method: its tuning score} of a tuning.json payload."""
  return {name: m['tuning_score'] for name, m in tuning['methods'].items() if 'tuning_score' in m}


# The fields of tuning.json that must agree for choices of two runs to sit in one table.
SAME_RULE = (
  'rule',
  'multipliers',
  'settings_per_method',
  'runs_per_method',
  'tune_split_seed',
  'tune_seeds',
)


def check_same_rule(earlier: dict, tuning: dict) -> None:
  """Raises ConfigError unless two tuning.json payloads (or the `SAME_RULE` fields of one about
  to run) agree in rule, budget, split and seeds: only then had their methods the same budget."""
  differ = [k for k in SAME_RULE if earlier.get(k) != tuning.get(k)]
  if differ:
    raise ConfigError(
      f'--keep_from: the earlier tuning differs in {differ} (earlier '
      f'{[earlier.get(k) for k in differ]}, now {[tuning.get(k) for k in differ]}): its '
      'methods were not tuned with the same budget; retune every method instead.'
    )


def merge_tuning(earlier: dict, tuning: dict) -> dict:
  """`earlier`'s tuning.json with the methods of `tuning` replaced (`check_same_rule` first)."""
  check_same_rule(earlier, tuning)
  return {**earlier, **tuning, 'methods': {**earlier['methods'], **tuning['methods']}}


# Scores that time a run; they differ between runs of the same computation.
TIMING_SCORES = ('RTE_s', 'compile_s')


def check_same_references(earlier: dict, payload: dict) -> None:
  """Raises ConfigError unless the two results have the same split, seeds and, score by score,
  the same Original and Retrain rows (timings aside): only then do rows of one belong beside rows
  of the other."""
  if earlier['split'] != payload['split'] or earlier['seeds'] != payload['seeds']:
    raise ConfigError(
      f'--keep_from: the earlier results have split {earlier["split"]} and seeds '
      f'{earlier["seeds"]}; this run {payload["split"]} and {payload["seeds"]}.'
    )
  for row in REFERENCE_ROWS:
    for seed, (old, new) in zip(
      payload['seeds'], zip(earlier['per_seed'][row], payload['per_seed'][row])
    ):
      differ = sorted(k for k in set(old) & set(new) if k not in TIMING_SCORES and old[k] != new[k])
      if differ:
        raise ConfigError(
          f'--keep_from: {row} seed {seed} differs from the earlier run in {differ}: the kept '
          'rows would not be comparable; rerun every method instead.'
        )


def merge_results(earlier: dict, payload: dict, tuned: list[str]) -> dict:
  """`earlier`'s results with the rows of the `tuned` methods (their config sections and tuning
  scores too) taken from `payload`; a kept row lacking ToW gets it from its own scores and
  Retrain's. The payload records which rows came from which run."""
  check_same_references(earlier, payload)
  per_seed = {row: [dict(s) for s in scores] for row, scores in earlier['per_seed'].items()}
  for row, scores in payload['per_seed'].items():
    if row not in REFERENCE_ROWS:
      per_seed[row] = scores
  for scores in per_seed.values():
    for score, retrain in zip(scores, per_seed['Retrain']):
      score.setdefault('ToW', metrics.tow(score, retrain))
  config = {**earlier['config'], 'method': dict(earlier['config']['method'])}
  for name in tuned:
    config['method'][name] = payload['config']['method'][name]
  kept = [row for row in earlier['per_seed'] if row not in REFERENCE_ROWS and row not in tuned]
  return {
    **payload,
    'config': config,
    'methods': earlier['methods'],
    'per_seed': per_seed,
    'summary': {row: summarise(scores) for row, scores in per_seed.items()},
    'tuning_scores': {**earlier.get('tuning_scores', {}), **payload.get('tuning_scores', {})},
    'merged': {
      'rows_of_this_run': list(REFERENCE_ROWS) + tuned,
      'rows_kept': kept,
      'kept_rows_made_with': {k: earlier.get(k) for k in ('versions', 'device', 'wall_seconds')},
      'this_run_config': payload['config'],
    },
  }
