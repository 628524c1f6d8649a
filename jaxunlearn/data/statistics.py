"""A dataset's per-channel mean and standard deviation, measured exactly and cached.

The statistics are measured on the train split and cached in `STATISTICS_FILE` beside the
prepared files, keyed by their names, sizes and modification times and by the image shape, so
they are measured again when the data change. The built-in datasets' statistics are fixed numbers
(`BUILTIN_STATISTICS`), the values every result on them used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable

import numpy as np

from jaxunlearn import files

STATISTICS_FILE = 'jaxunlearn_statistics.json'
# Images per pass of the pixel histograms (bounds their int64 temporaries).
_STATISTICS_CHUNK = 4096
# Train-split statistics of the built-in datasets, measured once and rounded to 4 digits.
BUILTIN_STATISTICS = {'mnist5k': ((0.1311,), (0.3083,)), 'digits': ((0.3056,), (0.3760,))}


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """Per-channel mean and (population) std of uint8 images [N,H,W,C], in [0, 1] pixel units.

  Computed exactly from per-channel pixel histograms with integer sums, so every machine gets the
  same floats. A constant channel gets std 1 (no scaling) instead of 0.

  Args:
    images: uint8 [N, H, W, C].

  Returns:
    (mean, std), one float per channel.
  """
  channels = images.shape[-1]
  counts = np.zeros((channels, 256), np.int64)
  for start in range(0, images.shape[0], _STATISTICS_CHUNK):
    chunk = images[start : start + _STATISTICS_CHUNK]
    for c in range(channels):
      counts[c] += np.bincount(chunk[..., c].ravel(), minlength=256)
  levels = np.arange(256, dtype=np.int64)
  mean, std = [], []
  for c in range(channels):
    n = int(counts[c].sum())
    total, squares = int(counts[c] @ levels), int(counts[c] @ levels**2)
    # Python integers: n * squares - total**2 overflows int64 on large datasets.
    deviation = math.sqrt((n * squares - total * total) / (n * n)) / 255.0
    mean.append(total / n / 255.0)
    std.append(deviation if deviation > 0 else 1.0)
  return tuple(mean), tuple(std)


def cached_statistics(
  directory: str | None,
  image_shape: tuple[int, int, int],
  train_images: Callable[[], np.ndarray],
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The train split's channel statistics, from `STATISTICS_FILE` in the prepared directory
  when its key matches the files there, else measured (and written there when possible).

  Args:
    directory: the dataset's prepared files (None: none, measure every time).
    image_shape: the images' (H, W, C) as loaded (after any resize).
    train_images: returns the train split's uint8 images [N, H, W, C] when called.

  Returns:
    (mean, std), one float per channel, in [0, 1] pixel units.
  """
  if directory is None or not os.path.isdir(directory):
    return channel_statistics(train_images())
  path = os.path.join(directory, STATISTICS_FILE)
  key = {
    'files': sorted(
      [entry.name, entry.stat().st_size, entry.stat().st_mtime_ns]
      for entry in os.scandir(directory)
      if entry.is_file() and not entry.name.startswith(STATISTICS_FILE)
    ),
    'image_shape': list(image_shape),
  }
  try:
    with open(path, encoding='utf-8') as f:
      cached = json.load(f)
    if cached['key'] == key:
      return tuple(cached['mean']), tuple(cached['std'])
  except (OSError, ValueError, KeyError, TypeError):
    pass  # No cache yet, or an unreadable one: measure again.
  mean, std = channel_statistics(train_images())
  try:
    with files.atomic_file(path, encoding='utf-8') as f:
      json.dump({'key': key, 'mean': mean, 'std': std}, f, indent=1)
  except OSError:
    pass  # A read-only data dir: measure on every load.
  return mean, std
