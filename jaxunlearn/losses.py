"""Weighted losses shared by training and every unlearning method.

Every batch carries a ``weight`` per example (0 for padding rows), so each loss is a weighted mean.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
  return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1e-12)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy with integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def weighted_cross_entropy(logits, labels, weight) -> jax.Array:
  return weighted_mean(cross_entropy(logits, labels), weight)


def weighted_accuracy(logits, labels, weight) -> jax.Array:
  """Accuracy in percent over the real (weight > 0) rows."""
  return 100.0 * weighted_mean(
    (jnp.argmax(logits, -1) == labels).astype(jnp.float32), (weight > 0).astype(jnp.float32)
  )


def distillation_kl(teacher_logits, student_logits, temperature: float) -> jax.Array:
  """Per-example KL(teacher || student) of the tempered softmaxes, times T^2 (Hinton et al.)."""
  t_log_p = jax.nn.log_softmax(teacher_logits / temperature)
  s_log_p = jax.nn.log_softmax(student_logits / temperature)
  return jnp.sum(jnp.exp(t_log_p) * (t_log_p - s_log_p), axis=-1) * temperature**2
