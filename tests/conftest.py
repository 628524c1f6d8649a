"""Shared fixtures: one offline data dir per test session, tiny configs and a prepared setup."""

import os
import tempfile

import jax
import pytest

from experiments.configs import train as train_config
from experiments.configs import unlearn as unlearn_config

# Probed CPU layouts (`jaxunlearn.experiment.probe_cpu_layout`) go to a per-run folder, not ~/.cache.
os.environ.setdefault('JAXUNLEARN_CACHE_DIR', tempfile.mkdtemp(prefix='jaxunlearn-cache-'))


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache: tests that rebuild the same step reuse its executable."""
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """The data dir of the run (JAXUNLEARN_DATA_DIR if set, so CI builds the datasets once)."""
  path = os.environ.get('JAXUNLEARN_DATA_DIR') or str(tmp_path_factory.mktemp('tfds'))
  os.environ['JAXUNLEARN_DATA_DIR'] = path
  return path


def tiny_config(workdir, data_dir, **overrides):
  """A config that trains a tiny CNN on `digits` in seconds."""
  c = train_config.get_config()
  c.workdir = str(workdir)
  c.data_dir = data_dir
  c.dataset = 'digits'
  c.model = 'cnn'
  c.model_kwargs.channels = (8,)
  c.model_kwargs.dense_width = 16
  c.batch_size = 64
  # One device: with 8 forced host devices on 2 busy cores, XLA's CPU collectives can miss their
  # 40 s rendezvous. Tests of the sharded paths ask for all devices explicitly.
  c.num_devices = 1
  c.epochs = 2
  c.checkpoint_every_steps = 10
  c.log_every = 10
  c.mia_classifier = 'logreg'
  for key, value in overrides.items():
    c[key] = value
  return c


def honesty_config(workdir, data_dir, forget):
  """The main job's config (mnist5k, small CNN, default method settings) for real-data checks."""
  c = unlearn_config.get_config()
  c.workdir = str(workdir)
  c.data_dir = data_dir
  c.forget = forget
  c.num_devices = 1  # long real-data runs; the sharded paths are tested elsewhere
  c.log_every = 10_000
  return c
