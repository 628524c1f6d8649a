r"""A CPU-sized CIFAR-10 protocol: the JPEG q75 copy, a stratified 10,000-image training subset, the
small CNN, every method.

  python -m experiments.prepare_cifar10 --archive=../shared/data/cifar10-jpeg.tar.gz   # once
  python -m experiments.tune --config=experiments/configs/cifar10_subset.py \
      --config.forget=random:0.1 --config.seeds=0,1,2

The folder is read from $JAXUNLEARN_DATA_DIR/downloads/cifar10-jpeg (where prepare_cifar10 puts it;
override with --config.dataset=imagefolder:PATH). With a real generalisation gap (the CNN reaches
about 60% test accuracy on 10,000 images), Retrain's accuracy on a forgotten random 10% is far
below the Original's, so random forgetting separates the methods here as it does not on mnist5k.
Results on it say "CIFAR-10 (JPEG q75 copy), 10k subset".
"""

import os

import jaxunlearn
from jaxunlearn.data import default_data_dir


def get_config():
  folder = os.path.join(default_data_dir(), 'downloads', 'cifar10-jpeg')
  return jaxunlearn.study_config(
    dataset=f'imagefolder:{folder}',
    train_subset=10_000,
    model='cnn',
    epochs=30,
    forget='random:0.1',
    # The committed tables ran on one CPU device; the probed layout (-1) would split batches
    # over the cores, and float summation order alone would change every score.
    num_devices=1,
  )
