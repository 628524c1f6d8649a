"""A tiny training run in its own process: killed-and-resumed and multi-host tests drive it.

  python -m tests.train_worker OUT_DIR WORKDIR DATA_DIR [process_id num_processes port]
Writes OUT_DIR/params.npz (final parameters) when the run ends.
"""

import os
import sys

if len(sys.argv) > 4:
  # Multi-host: one CPU device per process, so the only collectives cross processes (gloo); many
  # forced devices per process on 2 busy cores can stall XLA's in-process rendezvous.
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=1'

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxunlearn import experiment, sharding  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def main():
  out_dir, workdir, data_dir = sys.argv[1:4]
  if len(sys.argv) > 4:
    process_id, num_processes, port = map(int, sys.argv[4:7])
    sharding.maybe_initialize_distributed(f'127.0.0.1:{port}', num_processes, process_id)
  config = tiny_config(workdir, data_dir, epochs=3, checkpoint_every_steps=4,
                       num_devices=0 if len(sys.argv) > 4 else 1)
  setup = experiment.prepare(config)
  _, variables, _ = experiment.train_model(setup, kind='original', seed=0)
  if jax.process_index() == 0:
    flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
    np.savez(os.path.join(out_dir, 'params.npz'),
             **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat})


if __name__ == '__main__':
  main()
