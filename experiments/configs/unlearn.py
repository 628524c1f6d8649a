r"""The main job: every method on `mnist5k` with the small CNN, forgetting class 3, one seed.

  python -m experiments.unlearn
  python -m experiments.unlearn --config.forget=random:0.1 --config.seeds=0,1,2
  python -m experiments.unlearn --config.methods=ft,ga --config.seeds=0,1,2

Class-wise forgetting is the default because it separates the methods: the Original is far from
Retrain (which never saw a 3), whereas on a random 10% of mnist5k the Original is only about 1.5
points of Avg. Gap from Retrain and every method lands within seed noise of it. Method defaults are
sized for the small CNN on 4,000 digits (a few epochs on 2 CPU cores); each lives with its method
in `jaxunlearn/methods/NAME.py`, together with presets such as the CIFAR-10 / ResNet-18 reference
values (`unlearn_cifar10_resnet18.py`); forgetting random samples of mnist5k starts from the tuned
`random_mnist5k` presets (`jaxunlearn/methods/tuned_presets.py`). Study fields: `jaxunlearn.study`.
"""

import jaxunlearn


def get_config():
  return jaxunlearn.study_config(forget='class:3')
