"""The main job: every method on `mnist5k` with the small CNN, random 10% forgetting, one seed.

Method defaults here are scaled for the small CNN on 4,000 digits (a few epochs on 2 CPU cores);
`unlearn_cifar10_resnet18.py` holds the reference values for CIFAR-10 / ResNet-18.
Use: python -m experiments.unlearn --config.methods=ft,ga --config.seeds=0,1,2
"""

import ml_collections

from experiments.configs import sfron as sfron_config
from experiments.configs import train


def method(epochs, lr, *, name='sgd', momentum=0.9, weight_decay=5e-4, schedule='constant',
           grad_clip=0.0, batch_size=128, **options):
  cfg = ml_collections.ConfigDict(dict(
      epochs=epochs, batch_size=batch_size,
      optimizer=train.optimizer(name=name, lr=lr, schedule=schedule, momentum=momentum,
                                weight_decay=weight_decay, grad_clip=grad_clip)))
  cfg.update(options)
  return cfg


def method_configs():
  return ml_collections.ConfigDict(dict(
      ft=method(epochs=5, lr=0.02),
      # GA sits on a knife edge between forgetting and collapse: on class:3, lr 0.01 leaves 11.8%
      # forget accuracy (RA -2.8 points), lr 0.0105 gives 5.5% (RA -3.0), lr 0.012 collapses. No
      # budget we tried meets both on every seed (cosine lr 0.015-0.03, momentum 0, 5-60 epochs,
      # stopping at a forget-batch accuracy of 8-40%): forget accuracy < 10% cost 3-7 RA points.
      ga=method(epochs=5, lr=0.0105, grad_clip=1.0),
      # beta 0.9 collapsed on class:3 (RA 11%, then nan); 0.95 -9 points; 0.97 forgot nothing
      # (forget accuracy 84%); 0.96 with clipping: forget accuracy 0, RA -3 (2 seeds).
      neggrad_plus=method(epochs=3, lr=0.01, beta=0.96, grad_clip=1.0),
      rl=method(epochs=3, lr=0.01),
      l1_sparse=method(epochs=5, lr=0.02, alpha=5e-5),
      salun=method(epochs=3, lr=0.01, mask_fraction=0.5),
      bad_teacher=method(epochs=2, lr=0.01, temperature=1.0),
      # SCRUB's small-scale reference values (Adam lr 5e-4, alpha 0.5, gamma 1, T 2, msteps 3),
      # over 5 epochs; its weight decay (0.1 in one notebook) is the 5e-4 of every other method.
      scrub=method(epochs=5, lr=5e-4, name='adam', msteps=3, alpha=0.5, gamma=1.0,
                   temperature=2.0, lr_decay_epochs=(3, 4)),
      # Discriminative regularisation (Ding, Xu, Ji v1): FT's settings plus alpha in (0, 1].
      ce_ft=method(epochs=5, lr=0.02, alpha=0.5),
      kl_ft=method(epochs=5, lr=0.02, alpha=0.5),
      ice_ft=method(epochs=5, lr=0.02, alpha=0.5),
      # SFR-on with the paper's three elements, sized for mnist5k (experiments/configs/sfron.py).
      sfron=sfron_config.mnist5k(),
  ))


def get_config():
  c = train.get_config()
  c.methods = 'all'           # comma-separated names, or 'all'
  c.seeds = '0'               # varies Retrain's and each method's randomness, never the split
  c.original_seed = 0
  c.no_train = False          # refuse to train missing original/retrain models
  c.method = method_configs()
  c.plot = True
  c.results_name = 'results'  # writes {results_name}.json/.md/.png in the experiment directory
  return c
