"""The results picture: its helpers, and a picture of awkward rows (an outlier, diverged runs)."""

import itertools
import os

import matplotlib.image
import numpy as np
import pytest

from jaxunlearn import figures, report

NAN = float('nan')


def _stat(mean, std=0.0, n=3):
  return {'mean': mean, 'std': std, 'n': n}


def _row(ua, ra, ta, mia, gap, seconds, diverged=0.0):
  row = {
    'UA': _stat(ua, 0.5),
    'RA': _stat(ra, 0.1),
    'TA': _stat(ta, 0.2),
    'MIA': _stat(mia, 1.0),
    'AvgGap': _stat(gap, 0.3),
    'RTE_s': _stat(seconds, 0.01),
    'KL': _stat(0.1),
  }
  if diverged:
    row['diverged'] = _stat(diverged)
  return row


def _diverged_row():
  """A method that diverged in every seed, as `unlearn.summarise` writes it."""
  row = {k: {'mean': NAN, 'std': NAN, 'n': 0} for k in ('UA', 'RA', 'TA', 'MIA', 'AvgGap', 'KL')}
  row.update(RTE_s=_stat(0.2), diverged=_stat(1.0))
  return row


@pytest.fixture
def rows():
  return {
    'Original': _row(0.0, 99.9, 97.2, 0.3, 52.3, 2.3),
    'Retrain': _row(100.0, 99.9, 87.8, 100.0, 0.0, 1.3),
    'ft': _row(0.6, 100.0, 97.2, 4.5, 51.1, 0.22),  # the outlier: forgets nothing
    'rl': _row(100.0, 99.7, 87.8, 100.0, 0.08, 0.17),
    'salun': _row(100.0, 99.8, 87.8, 100.0, 0.08, 0.79),
    'scrub': _row(98.2, 99.7, 87.8, 99.4, 0.69, 0.28),
    'kl_ft': _row(100.0, 99.5, 87.0, 100.0, 0.31, 0.32),
    'ga': _row(99.2, 96.3, 84.8, 99.8, 1.93, 0.04, diverged=1 / 3),
    'neggrad_plus': _diverged_row(),
  }


def test_gap_order_ranks_by_gap_and_puts_diverged_last(rows):
  assert figures.gap_order(rows) == [
    'rl',
    'salun',
    'kl_ft',
    'scrub',
    'ga',
    'ft',
    'Original',
    'neggrad_plus',
  ]


def test_pareto_front():
  points = {
    'slow_exact': (10.0, 0.0),
    'fast_rough': (0.1, 5.0),
    'dominated': (1.0, 6.0),
    'middle': (1.0, 1.0),
    'tie_b': (2.0, 1.0),
    'tie_a': (2.0, 1.0),
    'broken': (NAN, 0.1),
    'same_x_worse': (0.1, 7.0),
  }
  assert figures.pareto_front(points) == ['fast_rough', 'middle', 'slow_exact']
  assert figures.pareto_front({}) == []
  assert figures.pareto_front({'a': (1.0, 1.0), 'b': (1.0, 1.0)}) == ['a']


def test_place_labels_overlap_nothing():
  # Five points in a clump and one far off, as the fine-tuning methods sit in the Pareto view.
  anchors = [
    (200.0, 200.0),
    (204.0, 201.0),
    (208.0, 199.0),
    (212.0, 200.0),
    (216.0, 202.0),
    (380.0, 40.0),
  ]
  sizes = [(60.0, 12.0), (30.0, 12.0), (90.0, 12.0), (40.0, 12.0), (20.0, 12.0), (50.0, 12.0)]
  bounds = (0.0, 0.0, 400.0, 300.0)
  marker = 7.0
  boxes = figures.place_labels(anchors, sizes, bounds, marker)
  for box, (w, h) in zip(boxes, sizes):
    assert box[0] >= 0 and box[1] >= 0 and box[2] <= 400 and box[3] <= 300
    assert np.isclose(box[2] - box[0], w) and np.isclose(box[3] - box[1], h)
  for a, b in itertools.combinations(boxes, 2):
    assert figures._overlap(a, b) == 0
  for box, (x, y) in itertools.product(boxes, anchors):
    assert figures._overlap(box, (x - marker, y - marker, x + marker, y + marker)) == 0
  # The lone point's label sits right beside it: on its left, as the right leaves the bounds.
  x0, y0, x1, y1 = boxes[-1]
  assert 380.0 - 2 * marker < x1 < 380.0 and y0 < 40.0 < y1


def test_picture_of_outlier_and_diverged_rows(rows, tmp_path):
  fig = figures.trade_off_figure(rows, 'synthetic')
  left, right = fig.axes
  labels = [t.get_text() for t in left.get_yticklabels()]
  assert labels[0] == 'rl (0.08)'
  assert labels[4] == 'ga (1.93, diverged in 33%)'
  assert labels[-1] == 'neggrad_plus (diverged)'
  assert left.get_yticklabels()[-1].get_color() == 'tab:red'
  assert any('no finite mean' in t.get_text() for t in left.texts)
  # The outlier is drawn where it is, on the symlog axis: nothing is cut off.
  assert left.get_xscale() == 'symlog' and left.get_xlim()[0] < -99.4
  # The note, then one label per drawn point (annotations are texts of the axes too).
  texts = [t.get_text() for t in right.texts]
  assert texts[0] == 'not drawn (no finite gap or time): neggrad_plus'
  assert sorted(texts[1:]) == sorted(set(rows) - {'neggrad_plus'})

  path = tmp_path / 'results.png'
  figures.plot(rows, str(path), 'synthetic')
  image = matplotlib.image.imread(path)
  assert image.shape[0] > 500 and image.shape[1] > 1500
  assert os.listdir(tmp_path) == ['results.png']  # no temporary file left behind


def test_write_results_writes_table_json_and_picture(rows, tmp_path):
  table = report.study_table(rows, class_wise=False)
  report.write_results(
    str(tmp_path),
    'results',
    {'summary': rows},
    title='synthetic',
    table=table,
    note=report.TABLE_NOTE,
    figure=figures.trade_off_figure(rows, 'synthetic'),
  )
  assert sorted(os.listdir(tmp_path)) == ['results.json', 'results.md', 'results.png']
  assert '| neggrad_plus (diverged in 100% of seeds) |' in table
  assert (tmp_path / 'results.md').read_text().startswith('# synthetic\n\n| Method |')
  report.write_results(str(tmp_path / 'many'), 'many_models', {}, title='t', table=table, note='n')
  assert sorted(os.listdir(tmp_path / 'many')) == ['many_models.json', 'many_models.md']


@pytest.mark.parametrize(
  'names', [('Retrain',), ('Original', 'Retrain'), ('Retrain', 'neggrad_plus')]
)
def test_picture_of_few_rows(rows, names, tmp_path):
  figures.plot({n: rows[n] for n in names}, str(tmp_path / 'results.png'), 'few rows')
  assert matplotlib.image.imread(tmp_path / 'results.png').shape[1] > 1500


def test_picture_needs_retrain(rows):
  del rows['Retrain']
  with pytest.raises(ValueError, match='Retrain'):
    figures.trade_off_figure(rows, 'synthetic')
