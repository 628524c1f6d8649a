"""A tiny training run in its own process: killed-and-resumed and multi-host tests drive it.

  python -m tests.train_worker OUT_DIR WORKDIR DATA_DIR [process_id num_processes port]
Writes OUT_DIR/params.npz (final parameters) when the run ends. On SIGUSR1 it prints the Python
stack of every thread (the tests ask for it before they kill a worker that hangs).
"""

import faulthandler
import os
import signal
import sys
import time
import traceback

faulthandler.register(signal.SIGUSR1, all_threads=True)

if len(sys.argv) > 4:  # multi-host: 4 CPU devices per process
  os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxunlearn import experiment, sharding  # noqa: E402
from tests.conftest import tiny_config  # noqa: E402


def main():
  out_dir, workdir, data_dir = sys.argv[1:4]
  if len(sys.argv) > 4:
    process_id, num_processes, port = map(int, sys.argv[4:7])
    sharding.maybe_initialize_distributed(f'127.0.0.1:{port}', num_processes, process_id)
  config = tiny_config(
    workdir, data_dir, epochs=3, checkpoint_every_steps=4, num_devices=0 if len(sys.argv) > 4 else 1
  )
  setup = experiment.prepare(config)
  if jax.process_index() == 1:
    # Train only once process 0 has created the checkpoint directory: the order that used to hang
    # (process 1 then found the directory and took checkpoint barriers that process 0 never took).
    checkpoints = os.path.join(setup.model_run_dir('original', 0), 'checkpoints')
    deadline = time.monotonic() + 120
    while not os.path.isdir(checkpoints) and time.monotonic() < deadline:
      time.sleep(0.05)
  _, variables, _ = setup.train_model('original', 0)
  if jax.process_index() == 0:
    flat = jax.tree_util.tree_flatten_with_path(variables['params'])[0]
    np.savez(
      os.path.join(out_dir, 'params.npz'),
      **{jax.tree_util.keystr(p): np.asarray(v) for p, v in flat},
    )


if __name__ == '__main__':
  try:
    main()
  except Exception:
    traceback.print_exc()
    sys.stderr.flush()
    # jax.distributed's exit handler waits at a shutdown barrier for the other process, which may
    # itself be waiting for this one inside a collective: skip it, so the test sees the failure.
    os._exit(1)
