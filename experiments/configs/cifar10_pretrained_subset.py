r"""The CPU-sized pre-trained protocol (RFA-LoRA's setting at the paper's shape, on 2 cores): the
small CNN pre-trained on the 40,000 CIFAR-10 training images outside the 10k subset, then the
Original and Retrain fine-tuned from it on the subset, every method, tuned and reported.

  python -m experiments.prepare_cifar10 --archive=PATH/cifar10-jpeg.tar.gz   # once
  python -m experiments.pretrain --config=experiments/configs/pretrain_cifar10.py   # once
  python -m experiments.tune --config=experiments/configs/cifar10_pretrained_subset.py \
      --config.forget=class:3 --config.seeds=0,1,2

The Original (on D) and Retrain (on D_r) start from the pre-trained body with a fresh head and are
fine-tuned for 10 epochs (SGD lr 0.01, cosine, batch 128, crop + flip). Everything else is the
from-scratch protocol of `cifar10_subset.py`, so the two tables compare method by method. The
pre-trained file is `pretrain_cifar10.py`'s default output under the default workdir; with another
workdir, give it as --config.init=PATH (the pretrain binary prints it).
"""

from experiments.configs import cifar10_subset, pretrain_cifar10
from jaxunlearn import config as config_lib
from jaxunlearn.pretraining import PretrainConfig, default_path


def get_config():
  c = cifar10_subset.get_config()
  pretrain = pretrain_cifar10.get_config()
  data = config_lib.section_from_flat(config_lib.DataConfig, pretrain)
  training = config_lib.section_from_flat(config_lib.TrainingConfig, pretrain)
  c.init = default_path(data, training, config_lib.section_from_flat(PretrainConfig, pretrain))
  c.epochs = 10
  c.optimizer.update(lr=0.01, schedule='cosine')
  return c
