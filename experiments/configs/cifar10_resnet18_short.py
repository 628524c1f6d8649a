r"""CIFAR-10 (JPEG q75 copy, all 50,000 training images), ResNet-18, a short recipe for one GPU:
Original and Retrain in 15 epochs each, then SFR-on, SalUn, RL and FT on random 10%, one seed.

  python -m experiments.prepare_cifar10 --archive=PATH/cifar10-jpeg.tar.gz
  python -m experiments.unlearn --config=experiments/configs/cifar10_resnet18_short.py

Recipe (ours, for a run of minutes, not the 200-epoch recipe of `train_cifar10_resnet18.py`):
batch 512, SGD with Nesterov momentum 0.9 and weight decay 5e-4, a one-cycle learning rate peaking
at 0.4 (lr 0.1 at batch 128 scaled linearly), crop + flip, layers computing in bfloat16 with
float32 weights. The methods run their 'cifar10_resnet18' presets (each gives its source). The
numbers to set beside it are the SalUn paper's CIFAR-10 / ResNet-18 random-10% rows for Retrain
and SalUn.
"""

import os

import jaxunlearn
from jaxunlearn.data import default_data_dir


def get_config():
  folder = os.path.join(default_data_dir(), 'downloads', 'cifar10-jpeg')
  c = jaxunlearn.study_config(
    preset='cifar10_resnet18',
    dataset=f'imagefolder:{folder}',
    model='resnet18',
    epochs=15,
    batch_size=512,
    compute_dtype='bfloat16',
    forget='random:0.1',
    seeds='0',
    methods='sfron,salun,rl,ft',
    checkpoint_every_steps=500,
    log_every=50,
  )
  c.optimizer.update(
    name='sgd', lr=0.4, schedule='onecycle', momentum=0.9, nesterov=True, weight_decay=5e-4
  )
  return c
