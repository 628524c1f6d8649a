"""Run constants (a frozen teacher, masks, fixed labels) are arguments of the step, not state:
checkpoints hold only what a run changes, and a resumed run rebuilds its constants."""

import os

import jax
import numpy as np
import pytest

from jaxunlearn.checkpoint import CheckpointManager
from jaxunlearn.loop import run
from jaxunlearn.methods import registry
from tests.conftest import BATCH


def _dir_bytes(path):
  return sum(
    os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
  )


@pytest.mark.parametrize('name', ['scrub', 'bad_teacher', 'salun', 'rl', 'sfron'])
def test_checkpoints_hold_no_constant_and_resume_exactly(tiny_context, tmp_path, name):
  ctx = tiny_context()
  cfg = registry.get(name).config().replace(batch_size=BATCH)
  cfg = cfg.replace(epochs=1) if hasattr(cfg, 'epochs') else cfg.replace(iterations=12)
  plan = registry.get(name).build(ctx, cfg)
  assert plan.constants, f'{name} has no run constants'
  full = run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan.constants,
    log_every=1000,
  )
  manager = CheckpointManager(str(tmp_path / 'ckpt'), every_steps=4, keep=1)
  run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan.constants,
    checkpointer=manager,
    log_every=1000,
    stop_after=6,
  )
  step = manager.latest_step()
  restored = manager.restore(step, plan.state)
  # The checkpoint is the state's tree: params, batch_stats, opt_state and the step, no constant.
  assert jax.tree.structure(restored) == jax.tree.structure(plan.state)
  state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(plan.state))
  constant_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(plan.constants))
  written = _dir_bytes(os.path.join(str(tmp_path / 'ckpt'), str(step)))
  assert written < state_bytes + constant_bytes / 2 + 64_000, (written, state_bytes, constant_bytes)
  # Resumed with the constants rebuilt by `build`: the same final weights, bit for bit.
  plan_again = registry.get(name).build(tiny_context(), cfg)
  resumed = run(
    plan_again.program,
    plan_again.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan_again.constants,
    checkpointer=manager,
    log_every=1000,
  )
  manager.close()
  jax.tree.map(
    np.testing.assert_array_equal,
    jax.device_get(full.state.params),
    jax.device_get(resumed.state.params),
  )
