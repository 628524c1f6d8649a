r"""The CPU-sized pre-trained setting: the small CNN pre-trained on the 40,000 CIFAR-10 training
images outside the 10,000-image subset that `cifar10_pretrained_subset.py` studies.

  python -m experiments.prepare_cifar10 --archive=PATH/cifar10-jpeg.tar.gz   # once
  python -m experiments.pretrain --config=experiments/configs/pretrain_cifar10.py

30 epochs of the from-scratch tables' recipe (SGD lr 0.05, cosine, batch 128, crop + flip) on one
CPU device; the weights go to workdir/pretrained/.
"""

import os

from jaxunlearn import config as config_lib
from jaxunlearn.data import default_data_dir
from jaxunlearn.pretraining import PretrainConfig

SUBSET = 10_000


def get_config():
  c = config_lib.training_config()
  c.update(config_lib.to_config_dict(PretrainConfig(exclude_subset=SUBSET)))
  c.dataset = f'imagefolder:{os.path.join(default_data_dir(), "downloads", "cifar10-jpeg")}'
  c.model = 'cnn'
  c.epochs = 30
  c.num_devices = 1
  c.log_every = 200
  c.checkpoint_every_steps = 1000
  return c
