"""Unlearning metrics: pure functions over logits, labels and features.

Inputs may be numpy or jax.numpy arrays; they are copied to host and computed in float64 with numpy.
Scalars come back as Python floats, per-example values as numpy arrays. Accuracies are percentages.

Conventions (the field's, as in SalUn's reference code):
    UA = 100 - accuracy on D_f, RA = accuracy on D_r, TA = accuracy on the test set.
    MIA-Efficacy = percentage of D_f that a membership classifier predicts as NON-member
    (higher = more forgotten). Some code reports the complement; every table should say which.
"""

import math

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

MIA_FEATURES = ('confidence', 'entropy')
MIA_CLASSIFIERS = ('svc', 'logreg')
AVG_GAP_KEYS = ('UA', 'RA', 'TA', 'MIA')


def _as_logits(logits, name):
  """Returns `logits` as a finite float64 array of shape (examples, classes)."""
  array = np.asarray(logits, dtype=np.float64)
  if array.ndim != 2:
    raise ValueError(f'{name} must have shape (examples, classes); got shape {array.shape}.')
  if array.shape[0] == 0:
    raise ValueError(f'{name} is empty (0 examples); at least one example is needed.')
  if array.shape[1] == 0:
    raise ValueError(f'{name} has 0 classes; at least one class is needed.')
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains nan or inf; only finite logits are allowed.')
  return array


def _as_labels(labels, num_examples, num_classes, name):
  """Returns `labels` as an int64 vector of `num_examples` class ids in [0, num_classes)."""
  array = np.asarray(labels)
  if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f'{name} must hold integer class ids; got dtype {array.dtype}.')
  if array.shape != (num_examples,):
    raise ValueError(
      f'{name} must have shape ({num_examples},) to match the logits; got shape {array.shape}.'
    )
  if array.size and (array.min() < 0 or array.max() >= num_classes):
    raise ValueError(
      f'{name} must lie in [0, {num_classes}); got values in [{array.min()}, {array.max()}].'
    )
  return array.astype(np.int64)


def _checked(logits, labels, logits_name='logits', labels_name='labels'):
  logits = _as_logits(logits, logits_name)
  labels = _as_labels(labels, logits.shape[0], logits.shape[1], labels_name)
  return logits, labels


def _log_softmax(logits):
  shifted = logits - logits.max(axis=1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def _accuracy(logits, labels):
  # np.argmax breaks ties towards the lowest class id.
  return float(100.0 * np.mean(np.argmax(logits, axis=1) == labels))


def accuracy(logits, labels) -> float:
  """Percent (0..100) of examples whose arg-max logit is the label; ties go to the lowest class."""
  return _accuracy(*_checked(logits, labels))


def softmax_confidence(logits, labels) -> np.ndarray:
  """Softmax probability of the true label per example, computed stably via log-softmax."""
  logits, labels = _checked(logits, labels)
  return np.exp(np.take_along_axis(_log_softmax(logits), labels[:, None], axis=1)[:, 0])


def prediction_entropy(logits) -> np.ndarray:
  """Entropy (nats) of the softmax distribution per example, computed stably via log-softmax."""
  log_probs = _log_softmax(_as_logits(logits, 'logits'))
  return -np.sum(np.exp(log_probs) * log_probs, axis=1)


def mia_member_indices(num_retain: int, num_test: int, seed: int) -> np.ndarray:
  """Sorted indices into D_r of the MIA's members: a seeded random subset of the test set's size.

  SalUn's code takes the first len(test) examples of D_r; a seeded random draw avoids depending on
  D_r's order. When D_r is not larger than the test set, every D_r example is a member.
  """
  if num_retain <= num_test:
    return np.arange(num_retain)
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(num_retain, size=num_test, replace=False))


def _mia_feature(logits, labels, feature):
  if feature == 'confidence':
    return softmax_confidence(logits, labels)
  return prediction_entropy(logits)


def _mia_classifier(classifier):
  if classifier == 'svc':
    return SVC(C=3, gamma='auto', kernel='rbf')
  return LogisticRegression(class_weight='balanced')


def _validate_mia_options(feature, classifier, feature_name, classifier_name):
  if feature not in MIA_FEATURES:
    raise ValueError(f'{feature_name} must be one of {MIA_FEATURES}; got {feature!r}.')
  if classifier not in MIA_CLASSIFIERS:
    raise ValueError(f'{classifier_name} must be one of {MIA_CLASSIFIERS}; got {classifier!r}.')


def mia_efficacy(
  *,
  retain_logits,
  retain_labels,
  test_logits,
  test_labels,
  forget_logits,
  forget_labels,
  feature: str = 'confidence',
  classifier: str = 'svc',
  seed: int = 0,
) -> float:
  """MIA-Efficacy: percent of D_f a membership attack predicts NON-member (higher = more forgotten).

  SalUn's convention: the attack is fit on one per-example feature, members (1) = a seeded random
  subset of D_r the size of the test set (all of D_r if smaller), non-members (0) = the given test
  examples.

  Args:
      retain_logits, retain_labels: model outputs and labels on D_r.
      test_logits, test_labels: on the non-member (test) examples.
      forget_logits, forget_labels: on D_f, the examples whose membership is judged.
      feature: 'confidence' (softmax probability of the true label) or 'entropy' (of the softmax).
      classifier: 'svc' (RBF SVC with C=3, gamma='auto', as SalUn's reference) or 'logreg'
          (logistic regression with balanced class weights).
      seed: drives the member subset, the only random choice (both classifiers are
          deterministic).
  """
  _validate_mia_options(feature, classifier, 'feature', 'classifier')
  retain = _checked(retain_logits, retain_labels, 'retain_logits', 'retain_labels')
  test = _checked(test_logits, test_labels, 'test_logits', 'test_labels')
  forget = _checked(forget_logits, forget_labels, 'forget_logits', 'forget_labels')
  members = mia_member_indices(retain[0].shape[0], test[0].shape[0], seed)
  member_x = _mia_feature(retain[0][members], retain[1][members], feature)
  nonmember_x = _mia_feature(*test, feature)
  inputs = np.concatenate([member_x, nonmember_x])[:, None]
  targets = np.concatenate([np.ones(member_x.size), np.zeros(nonmember_x.size)])
  attacker = _mia_classifier(classifier).fit(inputs, targets)
  predicted_member = attacker.predict(_mia_feature(*forget, feature)[:, None])
  return float(100.0 * np.mean(predicted_member == 0))


def kl_to_reference(reference_logits, logits) -> float:
  """Mean over examples of KL(softmax(reference_logits) || softmax(logits)), in nats.

  With the retrained model's logits on D_f as the reference, this is the D_KL that SFR-on reports.
  """
  reference = _as_logits(reference_logits, 'reference_logits')
  model = _as_logits(logits, 'logits')
  if reference.shape != model.shape:
    raise ValueError(
      f'reference_logits and logits must have the same shape; '
      f'got {reference.shape} and {model.shape}.'
    )
  log_p = _log_softmax(reference)
  log_q = _log_softmax(model)
  return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=1)))


def avg_gap(metrics: dict, reference: dict, keys=AVG_GAP_KEYS) -> float:
  """Avg. Gap: mean over `keys` of |metrics[k] - reference[k]|, reference = the retrained model's."""
  keys = tuple(keys)
  if not keys:
    raise ValueError('keys must name at least one metric; got an empty sequence.')
  for name, table in (('metrics', metrics), ('reference', reference)):
    missing = [k for k in keys if k not in table]
    if missing:
      raise KeyError(
        f'{name} lacks key(s) {missing}; it has {sorted(table)} and avg_gap needs {list(keys)}.'
      )
  return float(np.mean([abs(float(metrics[k]) - float(reference[k])) for k in keys]))


TOW_KEYS = ('UA', 'RA', 'TA')


def tow(metrics: dict, reference: dict) -> float:
  """Tug of War (ToW; Zhao et al., "What makes unlearning hard", NeurIPS 2024): the product over
  the forget, retain and test sets of 1 - |accuracy - the retrained model's| / 100.

  The forget-set accuracy is 100 - UA, so its difference is that of UA. ToW lies in [0, 1],
  HIGHER is better (1: the three accuracies equal Retrain's).

  Args:
    metrics: a model's 'UA', 'RA' and 'TA' in percent.
    reference: the retrained model's.
  """
  for name, table in (('metrics', metrics), ('reference', reference)):
    missing = [k for k in TOW_KEYS if k not in table]
    if missing:
      raise KeyError(f'{name} lacks key(s) {missing}; tow needs {list(TOW_KEYS)}.')
  return float(
    np.prod([1.0 - abs(float(metrics[k]) - float(reference[k])) / 100.0 for k in TOW_KEYS])
  )


def _as_feature_matrix(features, name):
  array = np.asarray(features, dtype=np.float64)
  if array.ndim < 2 or array.shape[0] < 2 or array.size == 0:
    raise ValueError(
      f'{name} must have shape (examples, ...) with at least 2 examples and 1 feature; '
      f'got shape {array.shape}.'
    )
  if not np.all(np.isfinite(array)):
    raise ValueError(f'{name} contains nan or inf; only finite features are allowed.')
  return array.reshape(array.shape[0], -1)


def _debiased_hsic(dot, rows_x, rows_y, examples):
  """The unbiased HSIC estimator (Song et al., 2012) from the plain one, up to a common factor.

  `dot` is ``||Y^T X||_F^2`` of centred X, Y; `rows_x`, `rows_y` their rows' squared norms.
  """
  return (
    dot
    - examples / (examples - 2) * (rows_x @ rows_y)
    + rows_x.sum() * rows_y.sum() / ((examples - 1) * (examples - 2))
  )


def linear_cka(x, y, *, debiased: bool = False) -> float:
  """Linear CKA (Kornblith et al., 2019) between two representations of the same examples.

  ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` with X, Y column-centred: in [0, 1], 1 for
  representations equal up to an orthogonal transform and an isotropic scaling. Computed in
  float64, through D x D or N x N (Gram) products, whichever is cheaper; both are the same in
  exact arithmetic.

  Unrelated representations score near 0 only with many more examples than features: for
  independent Gaussian features of widths p and q, CKA is about sqrt(p q / ((N + p) (N + q)))
  (0.45 at N = 5000, p = q = 4096). `debiased` uses the unbiased HSIC estimator instead
  (Kornblith et al.'s debiased CKA, whose reference code this follows): near 0 for unrelated
  representations at any N, still 1 for equal ones, and possibly slightly negative.

  Args:
      x: [examples, ...] features; non-example dims are flattened.
      y: [examples, ...] features of the same examples, any width.
      debiased: use the unbiased HSIC estimator (needs at least 4 examples).

  Returns:
      The CKA, or nan when x or y is constant over the examples (nothing left after centring).
  """
  x = _as_feature_matrix(x, 'x')
  y = _as_feature_matrix(y, 'y')
  examples = x.shape[0]
  if y.shape[0] != examples:
    raise ValueError(f'x and y must hold the same examples; got {examples} and {y.shape[0]} rows.')
  if debiased and examples < 4:
    raise ValueError(f'debiased CKA needs at least 4 examples; got {examples}.')
  x = x - x.mean(axis=0)
  y = y - y.mean(axis=0)
  x_norm, y_norm = np.linalg.norm(x), np.linalg.norm(y)
  if x_norm == 0 or y_norm == 0:
    return math.nan
  # CKA is scale-invariant: unit Frobenius norms keep the products near 1, far from overflow.
  x, y = x / x_norm, y / y_norm
  x_width, y_width = x.shape[1], y.shape[1]
  if examples * (x_width + y_width) < x_width**2 + y_width**2 + x_width * y_width:
    # <K, L>_F = ||Y^T X||_F^2 for the Gram matrices K = X X^T, L = Y Y^T.
    gram_x, gram_y = x @ x.T, y @ y.T
    dot_xy, dot_xx, dot_yy = (
      np.vdot(gram_x, gram_y),
      np.vdot(gram_x, gram_x),
      np.vdot(gram_y, gram_y),
    )
  else:
    dot_xy, dot_xx, dot_yy = (
      np.linalg.norm(y.T @ x) ** 2,
      np.linalg.norm(x.T @ x) ** 2,
      np.linalg.norm(y.T @ y) ** 2,
    )
  if debiased:
    rows_x, rows_y = np.einsum('ij,ij->i', x, x), np.einsum('ij,ij->i', y, y)
    dot_xy = _debiased_hsic(dot_xy, rows_x, rows_y, examples)
    dot_xx = _debiased_hsic(dot_xx, rows_x, rows_x, examples)
    dot_yy = _debiased_hsic(dot_yy, rows_y, rows_y, examples)
  return float(dot_xy / np.sqrt(dot_xx * dot_yy))


def _leaf_bytes(leaf):
  if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype'):
    return math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
  return np.asarray(leaf).nbytes


def tree_bytes(tree) -> int:
  """Bytes held by the array leaves of a PyTree (arrays or `jax.ShapeDtypeStruct`s).

  E.g. an optimiser state's memory: ``tree_bytes(jax.eval_shape(tx.init, params))``.
  """
  return sum(_leaf_bytes(leaf) for leaf in jax.tree.leaves(tree))


def trainable_fraction(params, param_types, trainable) -> float:
  """Fraction of the parameter scalars an optimiser partition trains.

  Args:
      params: the parameters (arrays or `jax.ShapeDtypeStruct`s), e.g. a LoRA model's, base
          weights and adapters together (as PEFT's ``print_trainable_parameters``).
      param_types: `params`' structure with each leaf's variable type (`ModelFns.param_types`).
      trainable: ``trainable(type) -> bool``, the predicate given to `optim.partition_by_type`.

  Returns:
      Trainable scalars / all scalars of `params`.
  """
  if jax.tree.structure(params) != jax.tree.structure(param_types):
    raise ValueError('param_types must have the tree structure of params (one type per leaf).')
  sizes = [math.prod(np.shape(leaf)) for leaf in jax.tree.leaves(params)]
  if not sum(sizes):
    raise ValueError('params holds no parameters; the fraction is undefined.')
  trained = sum(size for size, kind in zip(sizes, jax.tree.leaves(param_types)) if trainable(kind))
  return trained / sum(sizes)


def _as_test_mask(test_forget_mask, num_test):
  mask = np.asarray(test_forget_mask)
  if mask.dtype != np.bool_ or mask.shape != (num_test,):
    raise ValueError(
      f'test_forget_mask must be a bool array of shape ({num_test},) over the test examples; '
      f'got dtype {mask.dtype} and shape {mask.shape}.'
    )
  if mask.all() or not mask.any():
    raise ValueError(
      f'test_forget_mask must mark some but not all test examples as forgotten-class; '
      f'it marks {int(mask.sum())} of {num_test}.'
    )
  return mask


def unlearning_metrics(
  *,
  forget_logits,
  forget_labels,
  retain_logits,
  retain_labels,
  test_logits,
  test_labels,
  test_forget_mask=None,
  mia_feature='confidence',
  mia_classifier='svc',
  seed=0,
) -> dict:
  """UA, FA, RA, TA and MIA-Efficacy (all percentages) of one model.

  Returns {'UA': 100 - acc(D_f), 'FA': acc(D_f), 'RA': acc(D_r), 'TA': acc(whole test set),
  'MIA': MIA-Efficacy (percent of D_f predicted non-member, see `mia_efficacy`)}.

  Class-wise forgetting: pass `test_forget_mask`, a bool array marking the test examples of the
  forgotten class(es). Then 'TA_retain' (accuracy on remaining-class test examples) and 'TA_forget'
  (on forgotten-class ones) are added, and the MIA's non-members are the remaining-class test
  examples only: a model that should not know a class gives no representative non-member outputs
  on it. This follows SalUn's reference, which drops the forgotten class from the test set when a
  whole class is forgotten (so its "TA" is our 'TA_retain'), and so also sizes the member subset by
  the remaining-class test examples. 'TA' stays the accuracy on the whole test set.
  """
  _validate_mia_options(mia_feature, mia_classifier, 'mia_feature', 'mia_classifier')
  forget = _checked(forget_logits, forget_labels, 'forget_logits', 'forget_labels')
  retain = _checked(retain_logits, retain_labels, 'retain_logits', 'retain_labels')
  test = _checked(test_logits, test_labels, 'test_logits', 'test_labels')
  forget_accuracy = _accuracy(*forget)
  results = {
    'UA': 100.0 - forget_accuracy,
    'FA': forget_accuracy,
    'RA': _accuracy(*retain),
    'TA': _accuracy(*test),
  }
  nonmembers = test
  if test_forget_mask is not None:
    mask = _as_test_mask(test_forget_mask, test[0].shape[0])
    nonmembers = (test[0][~mask], test[1][~mask])
    results['TA_retain'] = _accuracy(*nonmembers)
    results['TA_forget'] = _accuracy(test[0][mask], test[1][mask])
  results['MIA'] = mia_efficacy(
    retain_logits=retain[0],
    retain_labels=retain[1],
    test_logits=nonmembers[0],
    test_labels=nonmembers[1],
    forget_logits=forget[0],
    forget_labels=forget[1],
    feature=mia_feature,
    classifier=mia_classifier,
    seed=seed,
  )
  return results
