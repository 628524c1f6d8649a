"""Gradient-descent simulation of fine-tuning dynamics on the linear-regression tasks.

Full-batch gradient descent on J_alpha (see `linreg.regularized_objective`; alpha = 0 is plain
fine-tuning on D_r) from any start, recording the remaining and unlearning losses after every
step. Its end point converges to the closed forms of `linreg`.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxunlearn.theory import linreg
from jaxunlearn.theory.data import LinRegTask


class Trajectory(NamedTuple):
  """A run of `steps` gradient steps.

  Attributes:
    w_final: the weights after the last step, (d,).
    remaining_loss: L(w, D_r) at steps 0 (the start), 1, ..., steps; shape (steps + 1,).
    unlearning_loss: L(w, D_f) (true forget targets) at the same steps.
  """

  w_final: jax.Array
  remaining_loss: jax.Array
  unlearning_loss: jax.Array


def default_learning_rate(task: LinRegTask, alpha=0.0) -> jax.Array:
  """1 / lambda_max of the Hessian of J_alpha: half the largest stable step, monotone decrease.

  The Hessian is 2 Z^T Z with Z = [X_r / sqrt(n_r); sqrt(alpha / n_f) X_f].
  """
  n_r, n_f = task.x_r.shape[0], task.x_f.shape[0]
  z = jnp.concatenate([task.x_r / jnp.sqrt(n_r), jnp.sqrt(alpha / n_f) * task.x_f])
  s_max = jnp.linalg.norm(z, ord=2)
  return 1.0 / (2.0 * jnp.square(s_max))


def _validate_steps(steps) -> None:
  if not isinstance(steps, int) or steps < 1:
    raise ValueError(f'steps must be a positive integer, got {steps!r}.')


@functools.partial(jax.jit, static_argnames=('steps',))
def gradient_descent(
  task: LinRegTask, w_start: jax.Array, learning_rate, alpha=0.0, *, steps: int
) -> Trajectory:
  """Runs `steps` full-batch gradient steps on J_alpha from w_start (lax.scan, jitted).

  Args:
    task: one task (no seed axis).
    w_start: start weights (d,).
    learning_rate: scalar step size; `default_learning_rate(task, alpha)` is safe.
    alpha: weight of the forget-data term; 0 = plain fine-tuning on D_r.
    steps: number of gradient steps (static).
  """
  _validate_steps(steps)
  grad = jax.grad(linreg.regularized_objective)

  def losses(w):
    return linreg.remaining_loss(w, task), linreg.unlearning_loss(w, task)

  def step(w, _):
    w = w - learning_rate * grad(w, task, alpha)
    return w, losses(w)

  w_final, (remaining, unlearning) = jax.lax.scan(step, w_start, length=steps)
  remaining_0, unlearning_0 = losses(w_start)
  return Trajectory(
    w_final,
    jnp.concatenate([remaining_0[None], remaining]),
    jnp.concatenate([unlearning_0[None], unlearning]),
  )


@functools.partial(jax.jit, static_argnames=('steps',))
def simulate(
  tasks: LinRegTask, w_starts: jax.Array, learning_rates: jax.Array, alpha=0.0, *, steps: int
) -> Trajectory:
  """`gradient_descent` vmapped over a leading seed axis of tasks, starts and learning rates.

  alpha is shared by every seed. Returns a Trajectory whose arrays carry the seed axis first.
  """
  _validate_steps(steps)
  run = functools.partial(gradient_descent, steps=steps)
  return jax.vmap(run, in_axes=(0, 0, 0, None))(tasks, w_starts, learning_rates, alpha)
