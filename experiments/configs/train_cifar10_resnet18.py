r"""The reference recipe for CIFAR-10 / ResNet-18 Original and Retrain models (GPU/TPU users).

  python -m experiments.train --config=experiments/configs/train_cifar10_resnet18.py

200 epochs, SGD lr 0.1 with a cosine schedule, momentum 0.9, weight decay 5e-4, batch 128: the
original and retrained models of the SFR-on and SalUn reference code (NOTES.md section 2).
Needs the TFDS `cifar10` data (TensorFlow installed, or array_record files prepared in data_dir),
or the shared JPEG copy: `python -m experiments.prepare_cifar10 --archive=PATH`, then
`--config.dataset=imagefolder:$JAXUNLEARN_DATA_DIR/downloads/cifar10-jpeg`.
"""

from experiments.configs import train

RECIPE = dict(
  dataset='cifar10', model='resnet18', epochs=200, checkpoint_every_steps=2000, log_every=100
)


def apply(c):
  """Sets the recipe on a training or study config."""
  c.update(RECIPE)
  c.optimizer.update(lr=0.1, schedule='cosine', momentum=0.9, weight_decay=5e-4)
  return c


def get_config():
  return apply(train.get_config())
