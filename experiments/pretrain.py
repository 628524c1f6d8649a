r"""Pre-trains a backbone on the training images a study does not use (the pre-trained recipe).

  python -m experiments.pretrain --config=experiments/configs/pretrain_cifar10.py

Writes the weights (`.safetensors` of the model's tree) and a JSON record beside them, and prints
the path to give the studies as ``--config.init=PATH``. A finished file is reused; a killed run
resumes from its last checkpoint.
"""

import os

from jaxunlearn import cli, pretraining

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'pretrain_cifar10.py'), 'Pre-training config.'
)


def main(argv):
  del argv
  record = pretraining.pretrain(_CONFIG.value)
  print(
    f'pre-trained on {record["num_examples"]} images: test accuracy '
    f'{record["test_accuracy"]:.2f}, {record["wall_seconds"]:.0f} s\n'
    f'--config.init={record["path"]}  (sha256 {record["sha256"][:16]})'
  )


if __name__ == '__main__':
  cli.run(main)
