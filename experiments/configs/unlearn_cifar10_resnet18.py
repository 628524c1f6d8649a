r"""The reference setting: CIFAR-10, ResNet-18, random 10% forgetting (GPU/TPU users).

  python -m experiments.unlearn --config=experiments/configs/unlearn_cifar10_resnet18.py

Original and Retrain: `train_cifar10_resnet18.py` (200 epochs, SGD lr 0.1 cosine, batch 128).
Methods: each method's 'cifar10_resnet18' preset, which gives its source (mostly the SFR-on
official code's baselines; SFR-on itself runs its official preset).
"""

import jaxunlearn
from experiments.configs import train_cifar10_resnet18


def get_config():
  return train_cifar10_resnet18.apply(jaxunlearn.study_config(preset='cifar10_resnet18'))
