"""Closed forms of the linear-regression theory of fine-tuning for unlearning (arXiv:2410.03833v1).

Notation: X_r, y_r remaining data; X_f, y_f forget data; A^+ the Moore-Penrose pseudo-inverse and
P_r = X_r^+ X_r the projector onto the row space of X_r. Every loss is a mean squared error
without a 1/2: L(w, D) = (1/n) ||X w - y||^2.

Gradient descent on a least-squares loss ||A w - b||^2 only moves w inside row(A), so from a start
w_s it converges (small enough step) to the minimiser closest to w_s, the "minimum-change"
solution w_s + A^+ (b - A w_s) = (I - P_A) w_s + A^+ b. Every model here is one of those limits.

Pseudo-inverses come from a thin SVD with numpy's pinv rank tolerance (singular values at or
below max(n, d) * eps * s_max count as zero); no Gram matrix is ever inverted, so rank-deficient X
(duplicate rows, rows of zeros) are handled, in float32 and float64.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxunlearn.theory.data import LinRegTask

REMEDY_OPTIONS = ('forget', 'retain')


class _Factor(NamedTuple):
  """Thin SVD x = U diag(s) V^T with 1/s set to 0 where s is numerically zero."""

  u: jax.Array
  inverse_s: jax.Array
  vt: jax.Array
  keep: jax.Array


def _thin_svd(x: jax.Array) -> _Factor:
  u, s, vt = jnp.linalg.svd(x, full_matrices=False)
  tolerance = max(x.shape) * jnp.finfo(s.dtype).eps * jnp.max(s, initial=0.0)
  keep = s > tolerance
  inverse_s = jnp.where(keep, 1.0 / jnp.where(keep, s, 1.0), 0.0)
  return _Factor(u, inverse_s, vt, keep)


def _pinv_apply(factor: _Factor, y: jax.Array) -> jax.Array:
  return factor.vt.T @ (factor.inverse_s * (factor.u.T @ y))


def _min_change(factor: _Factor, x: jax.Array, y: jax.Array, w_start: jax.Array) -> jax.Array:
  return w_start + _pinv_apply(factor, y - x @ w_start)


def min_norm_lstsq(x: jax.Array, y: jax.Array) -> jax.Array:
  """x^+ y: the minimum-norm minimiser of ||x w - y||^2 (an interpolator when one exists)."""
  return _pinv_apply(_thin_svd(x), y)


def project_row_space(x: jax.Array, w: jax.Array) -> jax.Array:
  """x^+ x w: the orthogonal projection of w onto the row space of x."""
  factor = _thin_svd(x)
  return factor.vt.T @ (factor.keep * (factor.vt @ w))


def min_change_solution(x: jax.Array, y: jax.Array, w_start: jax.Array) -> jax.Array:
  """w_start + x^+ (y - x w_start): the limit of gradient descent on ||x w - y||^2 from w_start."""
  return _min_change(_thin_svd(x), x, y, w_start)


def mse(w: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
  """(1/n) ||x w - y||^2."""
  return jnp.mean(jnp.square(x @ w - y))


def remaining_loss(w: jax.Array, task: LinRegTask) -> jax.Array:
  """L(w, D_r) = (1/n_r) ||X_r w - y_r||^2."""
  return mse(w, task.x_r, task.y_r)


def unlearning_loss(w: jax.Array, task: LinRegTask) -> jax.Array:
  """L(w, D_f) = (1/n_f) ||X_f w - y_f||^2 with the true forget targets: larger = more forgotten."""
  return mse(w, task.x_f, task.y_f)


def gap_to_golden(w: jax.Array, w_golden: jax.Array, task: LinRegTask) -> jax.Array:
  """|L(w, D_f) - L(w_g, D_f)|: how far w's forgetting is from retraining's."""
  return jnp.abs(unlearning_loss(w, task) - unlearning_loss(w_golden, task))


def pretrained(task: LinRegTask) -> jax.Array:
  """w_o = X^+ y on D_r u D_f: the limit of gradient descent from zero on all the data."""
  return min_norm_lstsq(
    jnp.concatenate([task.x_r, task.x_f]), jnp.concatenate([task.y_r, task.y_f])
  )


def golden(task: LinRegTask) -> jax.Array:
  """w_g = X_r^+ y_r: retraining from zero on D_r alone."""
  return min_norm_lstsq(task.x_r, task.y_r)


def finetune(task: LinRegTask, w_start: jax.Array) -> jax.Array:
  """w_t = (I - P_r) w_start + X_r^+ y_r: the limit of gradient descent on L(w, D_r) from w_start.

  From w_o, which already interpolates D_r, this is w_o itself: fine-tuning changes nothing.
  """
  return min_change_solution(task.x_r, task.y_r, w_start)


def remedy_keep_mask(task: LinRegTask, option: str) -> jax.Array:
  """Bool (d,) mask of the pretrained weights a remedy keeps; the others are reset to zero.

  'forget' (built from the forget data's own features): reset the forget-only features,
    f_support & ~r_support, keep everything else. With every feature shared nothing is reset and
    the option is void (it equals plain FT). Since w_o is a minimum-norm solution it vanishes off
    r_support | f_support, so this start is also "w_o restricted to the coordinates D_r uses": that
    coordinate-subspace reading of a remaining-data option coincides with this one.
  'retain' (built from the remaining data's own features): keep only the remaining-only
    features, r_support & ~f_support, and reset the rest, including the shared features the
    forget data also wrote into; fine-tuning on D_r then rebuilds the shared weights from D_r
    alone. With every feature shared it keeps nothing and becomes retraining from zero (golden).

  With distinct features both masks keep exactly r_support and both remedies equal golden.
  """
  if option == 'forget':
    return ~(task.f_support & ~task.r_support)
  if option == 'retain':
    return task.r_support & ~task.f_support
  raise ValueError(f'option must be one of {REMEDY_OPTIONS}, got {option!r}.')


def remedy_start(task: LinRegTask, w_o: jax.Array, option: str) -> jax.Array:
  """The pretrained weights with the remedy's reset applied (see `remedy_keep_mask`)."""
  return jnp.where(remedy_keep_mask(task, option), w_o, 0.0)


def _check_alpha(alpha) -> None:
  if isinstance(alpha, jax.core.Tracer):
    return
  value = float(alpha)
  if not 0.0 < value <= 1.0:
    raise ValueError(f'alpha must be in (0, 1], got {value!r}.')


def _regularized_design(task: LinRegTask, alpha) -> tuple[jax.Array, jax.Array]:
  """(Z, t) with J_alpha(w) = ||Z w - t||^2."""
  n_r, n_f = task.x_r.shape[0], task.x_f.shape[0]
  z = jnp.concatenate([task.x_r / jnp.sqrt(n_r), jnp.sqrt(alpha / n_f) * task.x_f])
  t = jnp.concatenate([task.y_r / jnp.sqrt(n_r), jnp.zeros((n_f,), task.y_r.dtype)])
  return z, t


def regularized_objective(w: jax.Array, task: LinRegTask, alpha) -> jax.Array:
  """J_alpha(w) = L(w, D_r) + alpha * (1/n_f) ||X_f w - 0||^2; alpha = 0 is plain FT's loss.

  This is our linear reading of v1's discriminative term CE(D_r) + alpha * CE(D_f, y'), whose y'
  is a wrong label: on the forget data the target becomes 0. Reasons for this reading:
    * it stays bounded below (a sum of squares), unlike L(w, D_r) - alpha * L(w, D_f), which
      goes to -inf along any direction that X_f sees and X_r does not (over-parameterised, such
      directions always exist);
    * 0 is what a model without forget-only information predicts on D_f: with distinct features
      the golden model predicts exactly 0 there, so the term pulls towards golden's predictions,
      whereas a flipped target such as -y_f overshoots golden by a factor 4 in loss;
    * it is a least-squares problem, so its gradient-descent limit from any start has the
      minimum-change closed form (`regularized_finetune`).
  """
  z, t = _regularized_design(task, alpha)
  return jnp.sum(jnp.square(z @ w - t))


def regularized_finetune(task: LinRegTask, w_start: jax.Array, alpha) -> jax.Array:
  """Limit of gradient descent on `regularized_objective` from w_start, alpha in (0, 1].

  Closed form w_start + Z^+ (t - Z w_start), Z = [X_r / sqrt(n_r); sqrt(alpha / n_f) X_f],
  t = [y_r / sqrt(n_r); 0]. When [X_r; X_f] has full row rank (the over-parameterised regime
  of the paper) both terms reach zero together, the limit is (I - P) w_start + X^+ [y_r; 0] for
  every alpha, and L(w, D_f) = (1/n_f) ||y_f||^2, which is golden's value with distinct features.
  alpha then sets only the speed of forgetting (see `dynamics.gradient_descent` for a finite
  budget); it shapes the limit when the two terms conflict, e.g. a forget example repeating a
  remaining one, whose prediction becomes the (1/n_r : alpha/n_f)-weighted mean of y_r and 0.
  """
  _check_alpha(alpha)
  z, t = _regularized_design(task, alpha)
  return min_change_solution(z, t, w_start)


def closed_form_endpoints(task: LinRegTask, alpha=1.0) -> dict[str, jax.Array]:
  """Every model of the comparison, as closed forms (vmap over a seed axis for a batch).

  Keys: 'pretrained' (w_o), 'ft' (FT from w_o), 'golden' (w_g), 'remedy_forget' and
  'remedy_retain' (reset, then FT; see `remedy_keep_mask`), 'reg_ft' (regularised FT from w_o).
  """
  w_o = pretrained(task)
  factor_r = _thin_svd(task.x_r)  # shared by every fine-tuning on D_r below

  def finetune_from(w_start):
    return _min_change(factor_r, task.x_r, task.y_r, w_start)

  return {
    'pretrained': w_o,
    'ft': finetune_from(w_o),
    'golden': _pinv_apply(factor_r, task.y_r),
    'remedy_forget': finetune_from(remedy_start(task, w_o, 'forget')),
    'remedy_retain': finetune_from(remedy_start(task, w_o, 'retain')),
    'reg_ft': regularized_finetune(task, w_o, alpha),
  }


def endpoint_losses(task: LinRegTask, weights: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Remaining loss, unlearning loss and gap to golden of every model in `weights`.

  Returns {'remaining_loss': {name: value}, 'unlearning_loss': ..., 'gap_to_golden': ...};
  `weights` must hold 'golden'.
  """
  if 'golden' not in weights:
    raise ValueError(f"weights must contain 'golden', got keys {sorted(weights)}.")
  w_g = weights['golden']
  return {
    'remaining_loss': {k: remaining_loss(w, task) for k, w in weights.items()},
    'unlearning_loss': {k: unlearning_loss(w, task) for k, w in weights.items()},
    'gap_to_golden': {k: gap_to_golden(w, w_g, task) for k, w in weights.items()},
  }
