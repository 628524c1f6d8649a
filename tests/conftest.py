"""Shared fixtures: one offline data dir per pytest run, tiny configs, and the tiny experiment
(a small CNN forgetting class 3 of `digits`) with its Original, prepared and trained once per test
process."""

import os
import tempfile

import jax
import pytest

import jaxunlearn
from experiments.configs import train as train_config
from experiments.configs import unlearn as unlearn_config
from jaxunlearn import experiment
from jaxunlearn.loop import run
from jaxunlearn.train import create_state, supervised_program

BATCH = 64  # the tiny experiment's batch size, and that of the methods run on it

# Probed CPU layouts (`jaxunlearn.experiment.probe_cpu_layout`) go to a per-run folder, not ~/.cache.
os.environ.setdefault('JAXUNLEARN_CACHE_DIR', tempfile.mkdtemp(prefix='jaxunlearn-cache-'))


# The longest test files, longest first. `--dist loadfile` hands files to the workers in collection
# order (once `pytest_configure` turns off xdist's reordering by test count), so starting with these
# leaves the short files to even out the end of the run.
LONGEST_FILES = (
  'test_honesty.py',
  'test_notebooks.py',
  'test_many_models.py',
  'test_sfron.py',
  'test_faults.py',
  'test_tune.py',
  'test_your_model.py',
  'test_methods.py',
  'test_train.py',
  'test_cli.py',
  'test_rfa_lora.py',
  'test_loop.py',
  'test_honesty_random.py',
  'test_theory.py',
  'test_lora.py',
  'test_models.py',
)


def pytest_configure(config):
  # xdist otherwise queues the files with the most tests first, whatever their length.
  if hasattr(config.option, 'loadscopereorder'):
    config.option.loadscopereorder = False


def pytest_collection_modifyitems(items):
  def rank(item):
    name = os.path.basename(str(item.path))
    return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

  items.sort(key=rank)  # stable: each file keeps its own order


@pytest.fixture(scope='session', autouse=True)
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache: tests that rebuild the same step reuse its executable."""
  jax.config.update('jax_compilation_cache_dir', str(tmp_path_factory.mktemp('jax_cache')))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
  # The backends start now, with the devices the command's XLA_FLAGS force, whichever test runs
  # first in this process.
  assert jax.device_count() >= 1


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
  c.batch_size = BATCH
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


def train_epoch(exp, *, mesh=None, steps=None, checkpointer=None, stop_after=None, lr=None):
  """One epoch of `exp`'s training recipe (at `lr`, if given) on all its training data, from the
  model of seed 0, at batch size 64 on `mesh` (default: the experiment's); only the first `steps`
  steps if given. Stops on a non-finite loss."""
  if mesh is not None:
    exp = exp.on_mesh(mesh)
  fns, variables = exp.model(0)
  optimizer = exp.training.optimizer if lr is None else exp.training.optimizer.replace(lr=lr)
  program, txs = supervised_program(
    fns,
    optimizer,
    num_examples=len(exp.train.sources['all']),
    batch_size=BATCH,
    epochs=1,
    source='all',
  )
  if steps is not None:
    program = program.__class__(program.kinds, program.schedule[:steps], program.batch_size)
  return run(
    program,
    create_state(variables, txs),
    exp.train,
    mesh=exp.mesh,
    seed=0,
    checkpointer=checkpointer,
    log_every=1000,
    stop_after=stop_after,
    stop_on_nonfinite=True,
  )


def tiny_study_config(workdir, data_dir, **overrides):
  """A study config on the tiny experiment: every method at batch size 64, one epoch."""
  c = jaxunlearn.study_config()
  c.update({k: v for k, v in tiny_config(workdir, data_dir).items() if k in c})
  for name in c.method:
    if 'epochs' in c.method[name]:
      c.method[name].epochs = 1
    c.method[name].batch_size = BATCH
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


@pytest.fixture(scope='session')
def tiny_experiment(tmp_path_factory, data_dir):
  """The tiny experiment forgetting class 3, prepared once per test process in a workdir of its
  own."""
  config = tiny_config(tmp_path_factory.mktemp('tiny'), data_dir, forget='class:3')
  return experiment.prepare(config)


@pytest.fixture(scope='session')
def tiny_original(tiny_experiment):
  """The tiny experiment's Original (seed 0), trained once per test process: (model_fns,
  variables). Its arrays are read-only, so a test that changed them in place fails instead of
  changing the Original of every later test."""
  model_fns, variables, _ = tiny_experiment.train_model('original', 0)
  for leaf in jax.tree.leaves(variables):
    leaf.setflags(write=False)
  return model_fns, variables


@pytest.fixture(scope='session')
def tiny_context(tiny_experiment, tiny_original):
  """``make(seed=0, batch_size=64, mesh=None, cache_dir='')``: the `UnlearnContext` of a method
  run on the tiny Original, with the data placed on `mesh` when one is given."""

  def make(*, seed=0, batch_size=BATCH, mesh=None, cache_dir=''):
    placed = tiny_experiment if mesh is None else tiny_experiment.on_mesh(mesh)
    return placed.context(*tiny_original, seed=seed, batch_size=batch_size, cache_dir=cache_dir)

  return make
