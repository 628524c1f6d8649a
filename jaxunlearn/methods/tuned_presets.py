"""Presets chosen by the tuning rule (`jaxunlearn.tuning`): one record per forget kind and dataset
tuned, each method's chosen values on top of the preset its tuning started from
(`registry.add_tuned_presets`, applied by `jaxunlearn.methods` once every method is registered).

A study forgetting that kind on that dataset starts from these (it prints which preset each
method starts from); ``--config.method.NAME.preset=defaults`` runs a method at its defaults.
A record's values are its tuning.json's `chosen`, which `tests/test_config.py` compares.
"""

from jaxunlearn.methods.registry import TunedPresets

# Random 10% of mnist5k, the small CNN (split seed 1, tuning seeds 3 and 4, 24 runs per method):
#   python -m experiments.tune --config.forget=random:0.1 --config.seeds=0,1,2
# (run in parts: some methods by --config.methods, the others joined by --keep_from)
RANDOM_MNIST5K = TunedPresets(
  name='random_mnist5k',
  forget='random',
  dataset='mnist5k',
  record='experiments/results/mnist5k-cnn/random-0.1-split0/tuning.json',
  choices={
    'bad_teacher': {'optimizer.lr': 0.01},
    'ce_ft': {'alpha': 0.15, 'optimizer.lr': 0.0018},
    'ft': {'optimizer.lr': 0.0789},
    'ga': {'optimizer.lr': 0.0133},
    'ice_ft': {'alpha': 1.0, 'optimizer.lr': 0.0018},
    'kl_ft': {'alpha': 0.15, 'optimizer.lr': 0.0018},
    'l1_sparse': {'alpha': 0.00015, 'optimizer.lr': 0.06},
    'neggrad_plus': {'beta': 0.88, 'optimizer.lr': 0.03},
    'rfa_lora': {'gamma': 0.03, 'optimizer.lr': 0.009},
    'rl': {'optimizer.lr': 0.00405},
    'salun': {'mask_fraction': 0.5, 'optimizer.lr': 0.003},
    'scrub': {'msteps': 3, 'optimizer.lr': 0.0045},
    'sfron': {'forget_optimizer.lr': 0.003, 'optimizer.lr': 0.27},
    'ssd': {'dampening_constant': 0.1, 'selection_weighting': 3.0},
  },
)

RECORDS = (RANDOM_MNIST5K,)
