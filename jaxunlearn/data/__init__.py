"""Datasets (TFDS), on-device preprocessing and forget-set splits."""

from jaxunlearn.data.datasets import (
    DATA_DIR_ENV,
    DATASETS,
    DEFAULT_DATASET,
    ArraySplit,
    DatasetInfo,
    dataset_info,
    default_data_dir,
    load_split,
    preprocess,
)
from jaxunlearn.data.forget import (
    ForgetSpec,
    ForgetSplit,
    forget_split_digest,
    load_forget_split,
    make_forget_split,
    parse_forget_spec,
    save_forget_split,
)

__all__ = [
    'DATA_DIR_ENV',
    'DATASETS',
    'DEFAULT_DATASET',
    'ArraySplit',
    'DatasetInfo',
    'ForgetSpec',
    'ForgetSplit',
    'dataset_info',
    'default_data_dir',
    'forget_split_digest',
    'load_forget_split',
    'load_split',
    'make_forget_split',
    'parse_forget_spec',
    'preprocess',
    'save_forget_split',
]
