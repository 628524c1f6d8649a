"""`experiments/benchmark.py`: the unlearning config (methods timed) plus the reference switches.

``reference='torch'`` runs `experiments/reference_benchmark.py` instead of the method timings:
the models and steps side by side with a PyTorch re-statement (needs the `bench` extra).
"""

from experiments.configs import unlearn


def get_config():
  c = unlearn.get_config()
  c.reference = 'none'  # 'none': time the methods; 'torch': against PyTorch
  c.device_preset = 'auto'  # 'cpu', 'gpu', or 'auto' (from JAX's default backend)
  c.reference_models = ''  # comma-separated subset of the preset's models ('' = all)
  c.reference_kinds = ''  # comma-separated subset of sgd, salun, sfron ('' = all)
  c.reference_repeats = 0  # timing rounds per side (0 = the preset's)
  c.cpu_devices = 0  # JAX CPU devices, the batch sharded over them (0 = one per core)
  c.cpu_single_device_baseline = True  # with several JAX devices, also time one device alone
  c.sfron_run = False  # also a whole SFR-on schedule on ResNet-18 (random data)
  return c
