"""PyTorch re-statement of the three steps that `experiments/reference_benchmark.py` times, and
the torch side's inputs, precision settings and runners.

The steps (`Stepper.sgd_step`, `salun_step`, `sfron_iteration`) restate the library's
(`jaxunlearn.train.supervised_step`, RL's step with SalUn's mask,
`jaxunlearn.methods.sfron.iteration`) with the same optimiser math: PyTorch-convention weight
decay (``g + wd * p`` before momentum), a 0/1 mask multiplying the final update, and SFR-on's
forget update with the torch clip formula. They run on the models of
`experiments/torch_reference.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from experiments import torch_reference
from experiments.reference_jax import CIFAR_MEAN, CIFAR_STD, NUM_CLASSES, SFRON, as_floats


def cross_entropy_per_example(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
  # float32 loss under autocast, as optax's cross-entropy of the JAX side.
  return F.cross_entropy(logits.float(), labels, reduction='none')


def sgd_direction(params, grads, buffers, *, momentum: float, weight_decay: float):
  """PyTorch SGD's momentum buffer update, ``b = momentum b + (g + wd p)``, in place; optax's
  ``add_decayed_weights`` then ``trace`` (the buffers start at zero, as optax's trace)."""
  torch._foreach_mul_(buffers, momentum)
  torch._foreach_add_(buffers, grads)
  torch._foreach_add_(buffers, params, alpha=weight_decay)


class Stepper:
  """One model's three steps in PyTorch, with the optimiser state they keep between calls.

  Args:
    model: the torch module (weights already loaded), on its device.
    params_tree: the Flax parameter pure dict, fixing the order of `params`.
    mask: the 0/1 mask pure dict (Flax layouts) of SalUn and SFR-on.
    lr: learning rate of the SGD and SalUn steps.
    momentum: SGD momentum.
    weight_decay: PyTorch-convention weight decay.
    autocast_dtype: None for float32, else the autocast compute dtype (torch.bfloat16).
  """

  def __init__(
    self,
    model: nn.Module,
    params_tree: dict,
    mask: dict,
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
    autocast_dtype=None,
  ):
    self.model = model.train()
    self.params = torch_reference.parameters_like(model, params_tree)
    device = self.params[0].device
    self.mask = torch_reference.tensors_like(model, mask, device)
    self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
    self.autocast_dtype = autocast_dtype
    self.device_type = device.type
    self.sgd = torch.optim.SGD(self.params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    zeros = lambda: [torch.zeros_like(p) for p in self.params]
    self.buffers = {'salun': zeros(), 'forget': zeros(), 'remain': zeros()}

  def _logits(self, images: torch.Tensor) -> torch.Tensor:
    if self.autocast_dtype is None:
      return self.model(images)
    with torch.autocast(self.device_type, dtype=self.autocast_dtype):
      return self.model(images)

  def _grads(self, loss: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss, self.params))

  def sgd_step(self, batch: dict) -> torch.Tensor:
    """Mean cross-entropy descent with torch.optim.SGD (the idiomatic training step)."""
    self.sgd.zero_grad(set_to_none=True)
    loss = cross_entropy_per_example(self._logits(batch['image']), batch['label']).mean()
    loss.backward()
    self.sgd.step()
    return loss.detach()

  def _masked_sgd(self, grads, name: str, lr) -> None:
    buffers = self.buffers[name]
    with torch.no_grad():
      sgd_direction(
        self.params, grads, buffers, momentum=self.momentum, weight_decay=self.weight_decay
      )
      torch._foreach_add_(self.params, torch._foreach_mul(buffers, self.mask), alpha=-lr)

  def salun_step(self, batch: dict) -> torch.Tensor:
    """Cross-entropy on D_f examples relabelled at random and D_r examples; the masked final
    update moves only the weights where the mask is 1."""
    labels = torch.where(batch['is_forget'] > 0, batch['random_label'], batch['label'])
    loss = cross_entropy_per_example(self._logits(batch['image']), labels).mean()
    self._masked_sgd(self._grads(loss), 'salun', self.lr)
    return loss.detach()

  def sfron_iteration(
    self,
    forget: dict | None,
    remain: dict,
    *,
    lr: float,
    scale: float,
    lam: float,
    clip: float,
    slow_rate: float,
  ):
    """One SFR-on iteration: masked, weighted forget ascent (clipped; skipped when `forget` is
    None), one remain descent, then the slow step ``theta_t - alpha (theta_t - theta_r)``.

    Returns:
      (the weighted forget CE or None, the remain CE).
    """
    slow = [p.detach().clone() for p in self.params]
    weighted = None
    if forget is not None:
      ce = cross_entropy_per_example(self._logits(forget['image']), forget['label'])
      with torch.no_grad():
        c = 1.0 / (ce.clamp_min(0.0) ** lam + 1e-15)
        weights = c * ce.shape[0] / c.sum()
      weighted = (weights * ce).mean()
      grads = torch._foreach_mul(self._grads(-scale * weighted), self.mask)
      with torch.no_grad():
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        torch._foreach_mul_(grads, torch.clamp(clip / (norm + 1e-6), max=1.0))
      self._masked_sgd(grads, 'forget', lr)
      weighted = weighted.detach()
    remain_ce = cross_entropy_per_example(self._logits(remain['image']), remain['label']).mean()
    grads = self._grads(remain_ce)
    with torch.no_grad():
      buffers = self.buffers['remain']
      sgd_direction(
        self.params, grads, buffers, momentum=self.momentum, weight_decay=self.weight_decay
      )
      torch._foreach_add_(self.params, buffers, alpha=-lr)
      # fast + (1 - alpha)(slow - fast), the form of the JAX side.
      torch._foreach_add_(self.params, torch._foreach_sub(slow, self.params), alpha=1.0 - slow_rate)
    return weighted, remain_ce.detach()


def make_stepper(
  name: str,
  input_shape: tuple[int, int, int],
  variables: dict,
  mask: dict,
  device,
  *,
  model_kwargs: dict | None = None,
  **hyperparameters,
) -> Stepper:
  """The torch twin of model `name`, at the JAX model's `variables`, on `device`, with its steps.

  Args:
    name: the model name (`torch_reference.create_model`).
    input_shape: (H, W, C).
    variables: the JAX model's variables (Flax pure dicts).
    mask: the 0/1 mask pure dict of SalUn and SFR-on.
    device: the torch device.
    model_kwargs: the model's keyword arguments.
    **hyperparameters: `Stepper`'s lr, momentum, weight_decay and autocast_dtype.
  """
  model = torch_reference.create_model(
    name, num_classes=NUM_CLASSES, input_shape=input_shape, **(model_kwargs or {})
  )
  torch_reference.load_jax_variables(model, variables)
  return Stepper(model.to(device), variables['params'], mask, **hyperparameters)


def kind_step(stepper: Stepper, kind: str) -> Callable[[dict], object]:
  """The torch step of `kind` ('sgd', 'salun', 'sfron' with the settings `SFRON`) on a batch."""
  if kind == 'sfron':
    return lambda b: stepper.sfron_iteration(b['forget'], b['remain'], lr=stepper.lr, **SFRON)
  return {'sgd': stepper.sgd_step, 'salun': stepper.salun_step}[kind]


def to_torch(tree: dict, device):
  """NumPy inputs as torch tensors on `device` (images NHWC -> NCHW; int labels as int64)."""

  def convert(key, value):
    if isinstance(value, dict):
      return {k: convert(k, v) for k, v in value.items()}
    if key == 'image':
      value = value.transpose(0, 3, 1, 2)
    tensor = torch.from_numpy(np.ascontiguousarray(value))
    return (tensor.long() if tensor.dtype == torch.int32 else tensor).to(device)

  return {k: convert(k, v) for k, v in tree.items()}


def synchronize(device) -> None:
  """Waits for the work queued on a CUDA `device` (a no-op on the CPU)."""
  if device.type == 'cuda':
    torch.cuda.synchronize(device)


def runner(step: Callable[[dict], object], batch: dict, device) -> Callable[[int], None]:
  """``run(n)``: n calls of `step` on one fixed batch, then a wait for the device."""

  def run(steps: int) -> None:
    for _ in range(steps):
      step(batch)
    synchronize(device)

  return run


class Precision:
  """Sets the matmul/conv precision of both libraries for one compute mode; restores on exit."""

  def __init__(self, compute: str):
    self.compute = compute
    self._jax = jax.default_matmul_precision(
      'tensorfloat32' if compute == 'tf32' else 'highest' if compute == 'float32' else None
    )

  def __enter__(self):
    self._saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.compute == 'tf32'
    self._jax.__enter__()
    return self

  def __exit__(self, *exc):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._saved
    return self._jax.__exit__(*exc)


def sfron_run(
  make: Callable[[], Stepper], data: dict, schedule, lrs: list[float], scales: list[float], device
) -> Callable[[], list[list[float]]]:
  """``run_all()``: a whole SFR-on run in PyTorch, returning every iteration's losses.

  Args:
    make: builds a fresh `Stepper` at the initial weights; each run calls it (building the model
      is part of the run, as on the JAX side creating its state).
    data: uint8 CIFAR-sized images and labels of D_f and D_r (`reference_jax.run_data`), placed
      on `device` here, once.
    schedule: per iteration (forgets, D_f positions, D_r positions) (`reference_jax.run_schedule`).
    lrs: the learning rate of each iteration.
    scales: the forget scale of each iteration.
    device: the torch device.
  """
  placed = {
    source: {
      'image': torch.from_numpy(d['image']).permute(0, 3, 1, 2).contiguous().to(device),
      'label': torch.from_numpy(d['label']).long().to(device),
    }
    for source, d in data.items()
  }
  mean = torch.tensor(CIFAR_MEAN, device=device).view(1, 3, 1, 1)
  std = torch.tensor(CIFAR_STD, device=device).view(1, 3, 1, 1)

  def batch(source: str, idx: np.ndarray) -> dict:
    idx = torch.from_numpy(idx).long().to(device)
    images = placed[source]['image'][idx].float() / 255.0
    return {'image': (images - mean) / std, 'label': placed[source]['label'][idx]}

  def run_all() -> list[list[float]]:
    stepper, losses = make(), []
    for t, (with_forget, f_idx, r_idx) in enumerate(schedule):
      forget = batch('forget', f_idx) if with_forget else None
      settings = {**SFRON, 'scale': scales[t]}
      losses.append(stepper.sfron_iteration(forget, batch('remain', r_idx), lr=lrs[t], **settings))
    synchronize(device)
    return [as_floats(loss) for loss in losses]

  return run_all
