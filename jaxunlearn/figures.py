"""Figures: the trade-off picture of a comparison, and what every figure of the library uses.

Pictures are `matplotlib.figure.Figure` objects drawn by the Agg renderer: nothing here selects a
pyplot backend, so a notebook keeps its own and shows a returned figure inline.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from jaxunlearn import files

SIGNED_METRICS = ('UA', 'RA', 'TA', 'MIA')
METRIC_STYLES = {
  'UA': ('tab:blue', 'o'),
  'RA': ('tab:orange', 's'),
  'TA': ('tab:green', '^'),
  'MIA': ('tab:red', 'D'),
}
# Below 1 point the axes of the picture are linear, above it logarithmic (see `trade_off_figure`).
LINEAR_WITHIN = 1.0
LEGEND_INCHES = 0.5  # room below the panels for their legends (two rows at most)


def _finite_mean(summary: dict, key: str) -> float | None:
  """The mean of `key` when it exists and is finite (not a method that diverged in every seed)."""
  s = summary.get(key)
  if not s or not s['n'] or not np.isfinite(s['mean']):
    return None
  return float(s['mean'])


def gap_order(rows: dict[str, dict]) -> list[str]:
  """Every row but Retrain: finite Avg. Gap ascending (ties by name), then those without one."""
  names = [n for n in rows if n != 'Retrain']
  ranked = sorted((g, n) for n in names if (g := _finite_mean(rows[n], 'AvgGap')) is not None)
  return [n for _, n in ranked] + [n for n in names if _finite_mean(rows[n], 'AvgGap') is None]


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
  """Names of the points that no other point beats in both coordinates (lower is better), by x.

  Points with a non-finite coordinate are left out. Of points with equal coordinates the first
  in name order is kept.
  """
  finite = sorted((x, y, n) for n, (x, y) in points.items() if np.isfinite(x) and np.isfinite(y))
  front, best = [], np.inf
  for _, y, name in finite:
    if y < best:
      front.append(name)
      best = y
  return front


def _overlap(a, b) -> float:
  """Overlap area of two boxes (x0, y0, x1, y1)."""
  return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _nearest_on_box(box, x: float, y: float) -> tuple[float, float]:
  return min(max(x, box[0]), box[2]), min(max(y, box[1]), box[3])


def _crosses(box, x0: float, y0: float, x1: float, y1: float) -> bool:
  """Whether the segment (x0, y0)-(x1, y1) passes through `box` (sampled finely enough for
  marker-sized boxes a few pixels apart)."""
  for t in np.linspace(0.0, 1.0, 25):
    x, y = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    if box[0] <= x <= box[2] and box[1] <= y <= box[3]:
      return True
  return False


def place_labels(
  anchors, sizes, bounds, marker: float = 7.0, radii=(8, 16, 26, 40, 58, 80)
) -> list[tuple[float, float, float, float]]:
  """Boxes for point labels that overlap no other label, marker or leader line.

  Greedy, in display pixels: each label in turn takes the first free box of rings of candidates
  around its anchor (right, left, above, below, the diagonals, then beside and half a label
  higher or lower; nearest ring first) inside `bounds`. A box away from its anchor gets a leader
  line to it (see `_label_points`), so a box whose line would pass over another point's marker or
  another label is not free either (the label would seem to name that point), nor one that an
  earlier label's line passes through. When no candidate is free, the one with the least overlap
  is taken.

  Args:
    anchors: (x, y) of each label's point.
    sizes: (width, height) of each label.
    bounds: (x0, y0, x1, y1) that every box must stay inside.
    marker: half the side of the square kept clear around every anchor.
    radii: distances from the anchor to the nearest side of the box, tried in order; the first
      clears the anchor's own marker.

  Returns:
    One (x0, y0, x1, y1) box per label.
  """
  directions = (
    (1, 0),
    (-1, 0),
    (0, 1),
    (0, -1),
    (1, 1),
    (-1, 1),
    (1, -1),
    (-1, -1),
    (1, 0.5),
    (-1, 0.5),
    (1, -0.5),
    (-1, -0.5),
  )
  markers = [(x - marker, y - marker, x + marker, y + marker) for x, y in anchors]
  placed, leaders = [], []
  for i, ((ax, ay), (w, h)) in enumerate(zip(anchors, sizes)):
    others = [m for j, m in enumerate(markers) if j != i]
    best, best_cost = None, np.inf
    for r in radii:
      for ux, uy in directions:
        cx, cy = ax + ux * (r + w / 2), ay + uy * (r + h / 2)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        if box[0] < bounds[0] or box[1] < bounds[1] or box[2] > bounds[2] or box[3] > bounds[3]:
          continue
        leader = (ax, ay, *_nearest_on_box(box, ax, ay))
        cost = sum(_overlap(box, t) for t in placed + markers)
        # A crossing costs as much as a marker-sized overlap: avoided where possible.
        crossings = sum(_crosses(m, *leader) for m in others + placed) + sum(
          _crosses(box, *line) for line in leaders
        )
        cost += 4 * marker**2 * crossings
        if cost < best_cost:
          best, best_cost, best_leader = box, cost, leader
        if cost == 0:
          break
      if best_cost == 0:
        break
    if best is None:  # no candidate fits inside the bounds: the nearest one to the right
      best = (ax + radii[0], ay - h / 2, ax + radii[0] + w, ay + h / 2)
      best_leader = (ax, ay, ax + radii[0], ay)
    placed.append(best)
    leaders.append(best_leader)
  return placed


def _symlog_ticks(axis, limit: float) -> None:
  """Plain-number ticks (0, ±1, ±10, ...) on a symlog axis reaching ±limit, minor ones between."""
  decades = range(int(np.ceil(np.log10(max(limit, 10.0)))) + 1)
  major = [0.0] + [sign * 10.0**k for k in decades for sign in (1, -1)]
  minor = [sign * m * 10.0**k for k in decades for m in range(2, 10) for sign in (1, -1)]
  axis.set_major_locator(ticker.FixedLocator(major))
  axis.set_minor_locator(ticker.FixedLocator(minor + [0.5, -0.5]))
  axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))


def _diverged_share(summary: dict) -> float:
  return summary.get('diverged', {}).get('mean', 0.0)


def _row_label(name: str, summary: dict) -> str:
  gap = _finite_mean(summary, 'AvgGap')
  if gap is None:
    return f'{name} (diverged)'
  share = _diverged_share(summary)
  suffix = f', diverged in {share:.0%}' if share > 0 else ''
  return f'{name} ({gap:.2f}{suffix})'


def _plot_differences(ax, rows: dict[str, dict], order: list[str]) -> None:
  """Panel (a): per method, the signed difference to Retrain of UA, RA, TA and MIA."""
  reference = {k: _finite_mean(rows['Retrain'], k) for k in SIGNED_METRICS}
  offsets = np.linspace(-0.27, 0.27, len(SIGNED_METRICS))
  extent = 10.0
  labelled = set()  # each metric named once in the legend
  for i, name in enumerate(order):
    if i % 2:
      ax.axhspan(i - 0.5, i + 0.5, color='0.94', zorder=0)
    drawn = False
    for offset, metric in zip(offsets, SIGNED_METRICS):
      mean = _finite_mean(rows[name], metric)
      if mean is None or reference[metric] is None:
        continue
      diff, std = mean - reference[metric], rows[name][metric]['std']
      color, marker = METRIC_STYLES[metric]
      ax.errorbar(
        diff,
        i + offset,
        xerr=std,
        color=color,
        marker=marker,
        markersize=5,
        capsize=2,
        linewidth=1,
        linestyle='none',
        label=None if metric in labelled else metric,
      )
      labelled.add(metric)
      extent = max(extent, abs(diff) + std)
      drawn = True
    if not drawn:
      ax.text(
        0, i, '  diverged in every seed: no finite mean', color='tab:red', va='center', fontsize=9
      )
  ax.axvline(0, color='black', linewidth=1, zorder=1)
  ax.set_xscale('symlog', linthresh=LINEAR_WITHIN, linscale=1.0)
  ax.set_xlim(-1.5 * extent, 1.5 * extent)
  _symlog_ticks(ax.xaxis, 1.5 * extent)
  ax.set_yticks(range(len(order)), [_row_label(n, rows[n]) for n in order])
  for tick, name in zip(ax.get_yticklabels(), order):
    if name == 'Original':
      tick.set_style('italic')
      tick.set_color('0.35')
    elif _finite_mean(rows[name], 'AvgGap') is None or _diverged_share(rows[name]) > 0:
      tick.set_color('tab:red')
  ax.set_ylim(max(len(order), 1) - 0.5, -0.5)
  ax.grid(axis='x', which='major', alpha=0.4)
  ax.set_xlabel(
    'method - Retrain (points; symlog: linear within ±1, log beyond)\n'
    'UA, MIA > 0: forgets more than Retrain; RA, TA < 0: less accurate'
  )
  ax.set_title(
    '(a) Difference to Retrain (line at 0), mean ± std;\n'
    'methods by Avg. Gap to Retrain (in brackets), best on top',
    fontsize=10,
  )


def _plot_pareto(ax, rows: dict[str, dict], order: list[str]) -> dict[str, tuple[float, float]]:
  """Panel (b) but the point labels: Avg. Gap against run time and the Pareto front.

  Returns the drawn points, {name: (RTE_s, AvgGap)}.
  """
  points = {}
  for name in ['Retrain'] + order:
    gap, time = _finite_mean(rows[name], 'AvgGap'), _finite_mean(rows[name], 'RTE_s')
    if gap is not None and time is not None and time > 0:
      points[name] = (time, gap)
  skipped = [n for n in order if n not in points]
  # Original's RTE_s is its training time: doing nothing costs no unlearning time, so it is a
  # reference only and takes no part in the front.
  front = pareto_front({n: p for n, p in points.items() if n != 'Original'})
  for name, (time, gap) in points.items():
    s = rows[name]
    time_std = s['RTE_s']['std']
    # Log x axis: a lower error bar reaching 0 is cut at a tenth of the mean.
    xerr = [[min(time_std, 0.9 * time)], [time_std]]
    if name == 'Retrain':
      style = dict(marker='*', markersize=13, color='black', zorder=4)
    elif name == 'Original':
      style = dict(marker='s', markersize=7, color='0.55', zorder=3)
    else:
      style = dict(
        marker='o',
        markersize=7,
        zorder=3,
        color='tab:purple' if name in front else 'tab:blue',
        markeredgecolor='tab:red' if _diverged_share(s) > 0 else 'none',
        markeredgewidth=2,
      )
    ax.errorbar(
      time,
      gap,
      xerr=xerr,
      yerr=s['AvgGap']['std'],
      linestyle='none',
      elinewidth=0.8,
      capsize=2,
      ecolor='0.75',
      **style,
    )
  if len(front) > 1:
    xs, ys = zip(*(points[n] for n in front))
    ax.step(
      xs,
      ys,
      where='post',
      color='tab:purple',
      linestyle='--',
      linewidth=1.2,
      zorder=2,
      label='Pareto front',
    )
  ax.plot([], [], 'o', color='tab:blue', label='method')
  ax.plot([], [], '*', color='black', markersize=10, label='Retrain (gap 0)')
  if 'Original' in points:
    ax.plot([], [], 's', color='0.55', label='Original (no unlearning)')
  if any(_diverged_share(rows[n]) > 0 for n in points if n not in ('Original', 'Retrain')):
    ax.plot(
      [],
      [],
      'o',
      color='tab:blue',
      markeredgecolor='tab:red',
      markeredgewidth=2,
      label='diverged in some seeds',
    )
  ax.set_xscale('log')
  ax.set_yscale('symlog', linthresh=LINEAR_WITHIN, linscale=1.0)
  if points:
    times = np.array([p[0] for p in points.values()])
    gaps = np.array([p[1] for p in points.values()])
    # Whole decades with room for labels on both sides: at least two labelled ticks.
    ax.set_xlim(
      10.0 ** np.floor(np.log10(times.min() / 2)), 10.0 ** np.ceil(np.log10(times.max() * 2))
    )
    ax.set_ylim(-0.3 * LINEAR_WITHIN, max(10.0, 2 * gaps.max()))
    _symlog_ticks(ax.yaxis, ax.get_ylim()[1])
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f'{v:g}'))
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())
  ax.grid(which='major', alpha=0.4)
  ax.set_xlabel('run time RTE_s (s, log; Original/Retrain: training time)')
  ax.set_ylabel('Avg. Gap to Retrain (symlog: linear within 1)')
  ax.set_title('(b) Closeness to Retrain against cost (lower left is better)', fontsize=10)
  if skipped:
    ax.text(
      0.99,
      0.98,
      'not drawn (no finite gap or time): ' + ', '.join(skipped),
      transform=ax.transAxes,
      ha='right',
      va='top',
      fontsize=9,
      color='tab:red',
    )
  return points


def _label_points(fig, ax, points: dict[str, tuple[float, float]]) -> None:
  """Names each point of `ax` beside it, without overlaps (see `place_labels`).

  Works in display pixels, so the layout must be final: nothing may move the axes afterwards.
  """
  renderer = fig.canvas.get_renderer()
  names = list(points)
  anchors = ax.transData.transform(np.array([points[n] for n in names]).reshape(-1, 2))
  sizes = []
  for name in names:
    text = ax.text(0, 0, name, fontsize=9)
    extent = text.get_window_extent(renderer)
    sizes.append((extent.width + 6, extent.height + 4))  # a margin between labels
    text.remove()
  marker = 7  # half the size of a marker in pixels, kept clear of labels
  bounds = ax.get_window_extent(renderer).extents
  boxes = place_labels(anchors, sizes, bounds, marker)
  to_points = 72.0 / fig.dpi
  for name, (x, y), box in zip(names, anchors, boxes):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    # A label not right beside its point gets a leader line, so that it names one point only.
    distance = np.hypot(max(box[0] - x, x - box[2], 0.0), max(box[1] - y, y - box[3], 0.0))
    ax.annotate(
      name,
      xy=points[name],
      xytext=((cx - x) * to_points, (cy - y) * to_points),
      textcoords='offset points',
      ha='center',
      va='center',
      fontsize=9,
      arrowprops=None
      if distance <= 1.5 * marker
      else dict(arrowstyle='-', color='0.3', linewidth=0.6, shrinkA=0, shrinkB=5),
    )


def trade_off_figure(rows: dict[str, dict], title: str):
  """The trade-off picture of a comparison, as a matplotlib Figure.

  (a) Per method, UA, RA, TA and MIA minus Retrain's, mean with std over seeds as error bars;
  methods sorted by Avg. Gap to Retrain (the figure in brackets), Original among them as the
  do-nothing reference. (b) Avg. Gap against run time, the Pareto view: Retrain (gap 0 at its
  training time) and the methods, the front of those no other beats in both, and Original as a
  reference (its time is training time, not unlearning time, so it is not on the front).

  Both value axes are symmetric-log, linear within ±1 point and logarithmic beyond: the
  regularisers or do-nothing methods sit 20-100 points from Retrain while the others differ by
  1-2 points or less, and on a linear axis the outliers would squash those differences into one
  dot. Unlike clipping, every value stays at its true position, so no annotation is needed.

  Methods that diverged in every seed (nan means, n = 0; see `unlearn.summarise`) are named in
  red, with a note instead of dots in (a) and in a list in (b); those that diverged in some seeds
  are drawn from the others, flagged in red.

  Args:
    rows: {name: {metric: {'mean', 'std', 'n'}}} with a 'Retrain' row (the zero reference).
    title: the figure's title.
  """
  if 'Retrain' not in rows:
    raise ValueError(f'rows must contain Retrain, the reference; got {sorted(rows)}.')
  order = gap_order(rows)
  fig = new_figure(figsize=(14, 2.2 + 0.42 * max(len(order), 6)), dpi=120)
  left, right = fig.subplots(1, 2, gridspec_kw={'width_ratios': (1, 1)})
  _plot_differences(left, rows, order)
  points = _plot_pareto(right, rows, order)
  fig.suptitle(title)
  # Label placement measures pixels: the layout must be final before the labels go in. The
  # legends go below the panels at a fixed height in inches, whatever the number of rows.
  fig.tight_layout(rect=(0, LEGEND_INCHES / fig.get_figheight(), 1, 1))
  for ax, ncol in ((left, len(SIGNED_METRICS)), (right, 3)):
    box = ax.get_position()
    fig.legend(
      *ax.get_legend_handles_labels(),
      loc='lower center',
      ncol=ncol,
      fontsize=9,
      frameon=False,
      bbox_to_anchor=((box.x0 + box.x1) / 2, 0),
    )
  _label_points(fig, right, points)
  return fig


def new_figure(**kwargs) -> Figure:
  """A `Figure` (`kwargs` as its constructor's) with an Agg canvas, independent of pyplot."""
  fig = Figure(**kwargs)
  FigureCanvasAgg(fig)
  return fig


def colormap(name: str):
  """Matplotlib's colormap `name` (e.g. 'Greens'), called on values in [0, 1]."""
  return colormaps[name]


def save_figure(fig, path: str) -> None:
  """Writes `fig` to `path` as a PNG, atomically (a reader never sees half a file)."""
  with files.atomic_file(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=fig.dpi)


def plot(rows: dict[str, dict], path: str, title: str) -> None:
  """Writes `trade_off_figure` to `path` as a PNG, atomically."""
  save_figure(trade_off_figure(rows, title), path)
