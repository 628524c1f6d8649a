"""Supervised training on the shared loop: the recipe of the original and the retrained model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxunlearn import losses
from jaxunlearn.config import OptimizerConfig
from jaxunlearn.data.device import epoch_steps
from jaxunlearn.loop import Program, StepFn, StepKind
from jaxunlearn.optim import make_optimizer, mask_updates
from jaxunlearn.state import ModelFns, TrainState


def create_state(
  variables: dict, optimizers: dict[str, optax.GradientTransformation]
) -> TrainState:
  """A fresh state at step 0 with one optax state per named optimiser."""
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    opt_state={name: tx.init(variables['params']) for name, tx in optimizers.items()},
  )


def apply_gradients(
  state: TrainState, grads, tx: optax.GradientTransformation, opt_name: str, mask=None
) -> TrainState:
  """One optax update of the parameters with the optimiser `opt_name`; a 0/1 `mask` PyTree, if
  given, multiplies the final update (`optim.mask_updates`)."""
  updates, opt_state = tx.update(grads, state.opt_state[opt_name], state.params)
  if mask is not None:
    updates = mask_updates(updates, mask)
  return state.replace(
    params=optax.apply_updates(state.params, updates),
    opt_state={**state.opt_state, opt_name: opt_state},
  )


def supervised_step(model_fns: ModelFns, tx: optax.GradientTransformation) -> StepFn:
  """Cross-entropy descent on the batch in slot 'train' (train-mode BatchNorm) with the optimiser
  'main'."""

  def step(state: TrainState, batch: dict, key: jax.Array, constants):
    del key, constants
    data = batch['train']

    def loss_fn(params):
      logits, batch_stats = model_fns.apply(
        {'params': params, 'batch_stats': state.batch_stats}, data['image'], train=True
      )
      loss = losses.weighted_cross_entropy(logits, data['label'], data['weight'])
      return loss, (logits, batch_stats)

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = apply_gradients(state.replace(batch_stats=batch_stats), grads, tx, 'main')
    return state, {
      'loss': loss,
      'accuracy': losses.weighted_accuracy(logits, data['label'], data['weight']),
    }

  return step


def supervised_program(
  model_fns: ModelFns,
  optimizer_cfg: OptimizerConfig,
  *,
  num_examples: int,
  batch_size: int,
  epochs: int,
  source: str,
) -> tuple[Program, dict]:
  """`epochs` passes of cross-entropy training over `source`; returns the program and optimisers."""
  total = epochs * epoch_steps(num_examples, batch_size)
  tx = make_optimizer(optimizer_cfg, total)
  kind = StepKind(fn=supervised_step(model_fns, tx), slots={'train': source})
  return Program(kinds={'train': kind}, schedule=['train'] * total, batch_size=batch_size), {
    'main': tx
  }
