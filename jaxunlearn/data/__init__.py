"""Datasets (built-in, TFDS, image folders), on-device preprocessing and forget-set splits."""

from jaxunlearn.data.device import gather_images, preprocess
from jaxunlearn.data.forget import (
  ForgetSpec,
  ForgetSplit,
  data_name,
  forget_split_digest,
  load_forget_split,
  make_forget_split,
  parse_forget_spec,
  save_forget_split,
  select_train_subset,
)
from jaxunlearn.data.sources import (
  DATA_DIR_ENV,
  DEFAULT_DATASET,
  ArraySplit,
  Dataset,
  DatasetInfo,
  dataset_info,
  default_data_dir,
  load_dataset,
  load_split,
  parse_image_size,
)
from jaxunlearn.data.statistics import channel_statistics

__all__ = [
  'DATA_DIR_ENV',
  'DEFAULT_DATASET',
  'ArraySplit',
  'Dataset',
  'DatasetInfo',
  'ForgetSpec',
  'ForgetSplit',
  'channel_statistics',
  'data_name',
  'dataset_info',
  'default_data_dir',
  'forget_split_digest',
  'gather_images',
  'load_dataset',
  'load_forget_split',
  'load_split',
  'make_forget_split',
  'parse_forget_spec',
  'parse_image_size',
  'preprocess',
  'save_forget_split',
  'select_train_subset',
]
