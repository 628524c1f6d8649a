r"""The main job: every method on `mnist5k` with the small CNN, random 10% forgetting, one seed.

  python -m experiments.unlearn --config.methods=ft,ga --config.seeds=0,1,2

Method defaults are sized for the small CNN on 4,000 digits (a few epochs on 2 CPU cores); each
lives with its method in `jaxunlearn/methods/NAME.py`, together with presets such as the CIFAR-10 /
ResNet-18 reference values (`unlearn_cifar10_resnet18.py`). Study fields: `jaxunlearn.study`.
"""

import jaxunlearn


def get_config():
  return jaxunlearn.study_config()
