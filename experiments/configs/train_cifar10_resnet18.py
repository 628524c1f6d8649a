"""The reference recipe for CIFAR-10 / ResNet-18 original and retrain models (GPU/TPU users).

200 epochs, SGD lr 0.1 with a cosine schedule, momentum 0.9, weight decay 5e-4, batch 128: the
original and retrained models of the SFR-on and SalUn reference code (NOTES.md section 2).
Needs the TFDS `cifar10` data (TensorFlow installed, or array_record files prepared in data_dir),
or the shared JPEG copy: `python -m experiments.prepare_cifar10`, then
`--config.dataset=imagefolder:$JAXUNLEARN_DATA_DIR/downloads/cifar10-jpeg`.
"""

from experiments.configs import train


def get_config():
  c = train.get_config()
  c.dataset = 'cifar10'
  c.model = 'resnet18'
  c.epochs = 200
  c.optimizer = train.optimizer(lr=0.1, schedule='cosine', momentum=0.9, weight_decay=5e-4)
  c.checkpoint_every_steps = 2000
  c.log_every = 100
  return c
