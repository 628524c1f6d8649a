"""Tests for jaxunlearn.metrics against hand-computed answers."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jaxunlearn import metrics

LOG3 = math.log(3.0)


def logits_with_confidence(confidence, labels, num_classes=10):
  """Logits whose softmax gives `confidence` to the label and spreads the rest evenly."""
  confidence = np.asarray(confidence, dtype=np.float64)
  rest = np.log((1.0 - confidence) / (num_classes - 1))
  logits = np.tile(rest[:, None], (1, num_classes))
  logits[np.arange(confidence.size), labels] = np.log(confidence)
  return logits


# ---------------------------------------------------------------- accuracy


def test_accuracy_counts_argmax_hits():
  logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.0, 1.0]])
  labels = np.array([0, 1, 1, 1])  # predictions 0, 1, 0, 1 -> 3 of 4 right
  assert metrics.accuracy(logits, labels) == 75.0


def test_accuracy_accepts_jax_arrays_and_breaks_ties_to_lowest_class():
  logits = jnp.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])  # ties: predictions 0 and 1
  labels = jnp.array([0, 2], dtype=jnp.int32)
  assert metrics.accuracy(logits, labels) == 50.0


# ---------------------------------------------------------------- confidence and entropy


def test_softmax_confidence_matches_hand_probabilities():
  logits = np.array([[0.0, LOG3], [LOG3, 0.0], [1000.0, 1000.0 + LOG3]])
  labels = np.array([1, 1, 0])
  np.testing.assert_allclose(
    metrics.softmax_confidence(logits, labels), [0.75, 0.25, 0.25], rtol=1e-12
  )


def test_softmax_confidence_is_finite_for_extreme_logits():
  logits = np.array([[1e4, 0.0], [-1e4, 1e4]])
  result = metrics.softmax_confidence(logits, np.array([1, 1]))
  assert np.all(np.isfinite(result))
  np.testing.assert_allclose(result, [0.0, 1.0], atol=1e-300)


def test_prediction_entropy_matches_hand_values():
  two_class = np.array([[0.0, LOG3], [1000.0, 1000.0 + LOG3]])
  expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))  # 0.5623351446...
  np.testing.assert_allclose(
    metrics.prediction_entropy(two_class), [expected, expected], rtol=1e-12
  )
  np.testing.assert_allclose(metrics.prediction_entropy(np.full((1, 4), 7.0)), [math.log(4.0)])
  np.testing.assert_allclose(metrics.prediction_entropy(np.array([[1e4, 0.0]])), [0.0], atol=1e-12)


# ---------------------------------------------------------------- KL, avg gap, feature distance


def test_kl_to_reference_two_examples_by_hand():
  reference = np.array([[0.0, LOG3], [0.0, 0.0]])  # p = [.25, .75], [.5, .5]
  model = np.array([[0.0, 0.0], [0.0, LOG3]])  # q = [.5, .5], [.25, .75]
  first = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
  second = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
  assert metrics.kl_to_reference(reference, model) == pytest.approx((first + second) / 2, rel=1e-12)
  assert (first + second) / 2 == pytest.approx(0.1373265, abs=1e-7)


def test_kl_to_reference_is_zero_for_shifted_logits_and_stable():
  reference = np.array([[1.0, 2.0, 3.0], [900.0, -900.0, 0.0]])
  assert metrics.kl_to_reference(reference, reference + 50.0) == pytest.approx(0.0, abs=1e-12)


def test_avg_gap_by_hand():
  unlearned = {'UA': 10.0, 'RA': 90.0, 'TA': 80.0, 'MIA': 20.0, 'FA': 90.0}
  retrain = {'UA': 12.0, 'RA': 95.0, 'TA': 80.0, 'MIA': 10.0}
  assert metrics.avg_gap(unlearned, retrain) == (2.0 + 5.0 + 0.0 + 10.0) / 4
  assert metrics.avg_gap(unlearned, retrain, keys=('RA', 'MIA')) == 7.5


# ---------------------------------------------------------------- representation metrics


def _centred_gram(features, unbiased):
  """Gram matrix centred by H K H, or by Song et al.'s unbiased centring (zero diagonal)."""
  gram = features @ features.T
  n = len(gram)
  if not unbiased:
    centring = np.eye(n) - 1.0 / n
    return centring @ gram @ centring
  np.fill_diagonal(gram, 0.0)
  means = gram.sum(axis=0) / (n - 2)
  means -= means.sum() / (2 * (n - 1))
  gram = gram - means[:, None] - means[None, :]
  np.fill_diagonal(gram, 0.0)
  return gram


def _cka_by_hsic(x, y, debiased=False):
  """Linear CKA from its definition: (unbiased) HSIC on centred Gram matrices."""
  gram_x, gram_y = _centred_gram(x, debiased), _centred_gram(y, debiased)
  return np.vdot(gram_x, gram_y) / np.sqrt(np.vdot(gram_x, gram_x) * np.vdot(gram_y, gram_y))


def _random_orthogonal(size, seed):
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(size, size)))
  return q * np.sign(np.diag(r))


def test_linear_cka_by_hand():
  # Orthogonal centred columns of equal norm against the first: 1 / sqrt(2).
  x = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])
  assert metrics.linear_cka(x, x[:, :1]) == pytest.approx(1 / math.sqrt(2), abs=1e-15)
  # One feature each: the squared correlation. Centred (-1.5, -.5, .5, 1.5) and
  # (-6.5, -3.5, 1.5, 8.5): 25^2 / (5 * 129).
  t = np.arange(1.0, 5.0)[:, None]
  assert metrics.linear_cka(t, t**2) == pytest.approx(125 / 129, abs=1e-15)


# (examples, width of x, width of y): the first two take the Gram-matrix form, the last two the
# feature-space form.
SHAPES = [(40, 200, 300), (50, 4096, 64), (500, 20, 30), (5000, 64, 16)]


@pytest.mark.parametrize('debiased', [False, True])
@pytest.mark.parametrize('examples,x_width,y_width', SHAPES)
def test_linear_cka_matches_the_hsic_definition_and_is_one_on_itself(
  examples, x_width, y_width, debiased
):
  rng = np.random.default_rng(examples)
  x = rng.normal(size=(examples, x_width)) + 3.0
  y = np.tanh(x[:, : min(x_width, y_width)] @ rng.normal(size=(min(x_width, y_width), y_width)))
  y = y + 0.5 * rng.normal(size=y.shape)
  cka = functools.partial(metrics.linear_cka, debiased=debiased)
  assert cka(x, x) == pytest.approx(1.0, abs=1e-12)
  assert cka(x.astype(np.float32), x) == pytest.approx(1.0, abs=1e-6)
  value = cka(x, y)
  assert value < 1.0 and (debiased or value > 0.0)  # Debiased CKA may dip below 0.
  if examples <= 500:  # The N x N reference is too slow beyond.
    assert value == pytest.approx(_cka_by_hsic(x, y, debiased), rel=1e-10)
  assert cka(y, x) == pytest.approx(value, rel=1e-12)


@pytest.mark.parametrize('debiased', [False, True])
def test_linear_cka_is_invariant_to_orthogonal_maps_scaling_and_offsets_not_to_anisotropy(debiased):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 16))
  y = np.maximum(x @ rng.normal(size=(16, 24)), 0.0)
  cka = functools.partial(metrics.linear_cka, debiased=debiased)
  value = cka(x, y)
  for transformed in (x @ _random_orthogonal(16, 1), 1e-3 * x, 1e3 * x, x + 1e4):
    assert cka(transformed, y) == pytest.approx(value, rel=1e-9)
  assert cka(x, 7.0 * y @ _random_orthogonal(24, 2) - 3.0) == pytest.approx(value, rel=1e-9)
  # Stretching one direction is not a similarity transform: CKA changes.
  stretched = x * np.r_[10.0, np.ones(15)]
  assert abs(cka(stretched, y) - value) > 1e-3
  # Non-example dims are flattened.
  assert cka(x.reshape(300, 4, 2, 2), y) == pytest.approx(value, rel=1e-12)


def test_linear_cka_of_independent_features_is_small_with_many_examples_or_debiased():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2000, 10)), rng.normal(size=(2000, 20))
  # About sqrt(10 * 20) / 2000 = 0.007 for independent Gaussian features.
  assert metrics.linear_cka(x, y) < 0.03
  # With about as many features as examples the plain estimate is biased up, to about
  # sqrt(p q / ((N + p) (N + q))) = 0.43 here; the debiased one stays near 0.
  x, y = rng.normal(size=(400, 300)), rng.normal(size=(400, 300))
  assert metrics.linear_cka(x, y) == pytest.approx(300 / 700, abs=0.03)
  assert abs(metrics.linear_cka(x, y, debiased=True)) < 0.03


def test_linear_cka_degenerate_and_bad_inputs():
  x = np.random.default_rng(2).normal(size=(10, 3))
  assert math.isnan(metrics.linear_cka(x, np.ones((10, 4))))
  with pytest.raises(ValueError, match='must hold the same examples; got 10 and 9 rows'):
    metrics.linear_cka(x, x[:9])
  with pytest.raises(ValueError, match=r'at least 2 examples and 1 feature; got shape \(1, 3\)'):
    metrics.linear_cka(x[:1], x[:1])
  with pytest.raises(ValueError, match=r'y must have shape.*got shape \(10,\)'):
    metrics.linear_cka(x, x[:, 0])
  with pytest.raises(ValueError, match='x contains nan or inf'):
    metrics.linear_cka(np.where(x > 1, np.inf, x), x)
  with pytest.raises(ValueError, match='debiased CKA needs at least 4 examples; got 3'):
    metrics.linear_cka(x[:3], x[:3], debiased=True)


def test_tree_bytes_counts_arrays_and_abstract_leaves():
  tree = {
    'w': np.zeros((3, 4), np.float32),
    'b': [jnp.zeros(5, jnp.int8)],
    'abstract': jax.ShapeDtypeStruct((2, 2), jnp.bfloat16),
    'empty': optax.EmptyState(),
  }
  assert metrics.tree_bytes(tree) == 48 + 5 + 8
  params = {'w': jnp.zeros((10, 3))}
  assert metrics.tree_bytes(jax.eval_shape(optax.adam(0.1).init, params)) == 2 * 120 + 4


def test_trainable_fraction():
  params = {
    'dense': {'kernel': np.zeros((2, 3)), 'lora_b': jax.ShapeDtypeStruct((4,), np.float32)},
    'bias': np.zeros(10),
  }
  types = {'dense': {'kernel': nnx.Param, 'lora_b': nnx.LoRAParam}, 'bias': nnx.Param}
  is_lora = lambda kind: issubclass(kind, nnx.LoRAParam)
  assert metrics.trainable_fraction(params, types, is_lora) == 4 / 20
  assert metrics.trainable_fraction(params, types, lambda kind: True) == 1.0
  with pytest.raises(ValueError, match='param_types must have the tree structure of params'):
    metrics.trainable_fraction(params, {'bias': nnx.Param}, is_lora)
  with pytest.raises(ValueError, match='params holds no parameters'):
    metrics.trainable_fraction({'b': np.zeros(0)}, {'b': nnx.Param}, is_lora)


# ---------------------------------------------------------------- MIA efficacy


def _separated_groups(seed=0):
  """Members (D_r) with confidence ~1 and non-members (test) with confidence ~0.1, 10 classes."""
  rng = np.random.default_rng(seed)
  retain_labels = rng.integers(0, 10, 120)
  retain_logits = logits_with_confidence(rng.uniform(0.97, 0.995, 120), retain_labels)
  test_labels = rng.integers(0, 10, 60)
  test_logits = logits_with_confidence(rng.uniform(0.08, 0.12, 60), test_labels)
  return retain_logits, retain_labels, test_logits, test_labels


@pytest.mark.parametrize('classifier', ['svc', 'logreg'])
@pytest.mark.parametrize('feature', ['confidence', 'entropy'])
def test_mia_efficacy_on_separated_groups(feature, classifier):
  retain_logits, retain_labels, test_logits, test_labels = _separated_groups()
  groups = dict(
    retain_logits=retain_logits,
    retain_labels=retain_labels,
    test_logits=test_logits,
    test_labels=test_labels,
    feature=feature,
    classifier=classifier,
  )
  like_members = metrics.mia_efficacy(
    forget_logits=retain_logits[:30], forget_labels=retain_labels[:30], **groups
  )
  like_nonmembers = metrics.mia_efficacy(
    forget_logits=test_logits[:30], forget_labels=test_labels[:30], **groups
  )
  half_and_half = metrics.mia_efficacy(
    forget_logits=np.concatenate([retain_logits[:20], test_logits[:20]]),
    forget_labels=np.concatenate([retain_labels[:20], test_labels[:20]]),
    **groups,
  )
  assert like_members == 0.0
  assert like_nonmembers == 100.0
  assert half_and_half == 50.0


def test_mia_member_indices_subset_size_and_determinism():
  first = metrics.mia_member_indices(1000, 100, seed=3)
  assert first.shape == (100,)
  assert np.unique(first).size == 100 and first.min() >= 0 and first.max() < 1000
  np.testing.assert_array_equal(first, metrics.mia_member_indices(1000, 100, seed=3))
  assert not np.array_equal(first, metrics.mia_member_indices(1000, 100, seed=4))
  np.testing.assert_array_equal(metrics.mia_member_indices(40, 100, seed=3), np.arange(40))


@pytest.mark.parametrize('classifier', ['svc', 'logreg'])
def test_mia_efficacy_seed_determinism(classifier):
  rng = np.random.default_rng(7)
  labels = {name: rng.integers(0, 10, n) for name, n in (('r', 400), ('t', 40), ('f', 300))}
  kwargs = dict(
    retain_logits=logits_with_confidence(rng.uniform(0.05, 0.99, 400), labels['r']),
    retain_labels=labels['r'],
    test_logits=logits_with_confidence(rng.uniform(0.05, 0.9, 40), labels['t']),
    test_labels=labels['t'],
    forget_logits=logits_with_confidence(rng.uniform(0.05, 0.99, 300), labels['f']),
    forget_labels=labels['f'],
    classifier=classifier,
  )
  by_seed = [metrics.mia_efficacy(seed=seed, **kwargs) for seed in range(4)]
  assert by_seed == [metrics.mia_efficacy(seed=seed, **kwargs) for seed in range(4)]
  # The seed reaches the member draw: different seeds give different attacks here.
  assert len(set(by_seed)) > 1


# ---------------------------------------------------------------- unlearning_metrics


def test_unlearning_metrics_random_forgetting_fields():
  retain_logits, retain_labels, test_logits, test_labels = _separated_groups()
  # Boost the next class by e^3 so every test prediction is wrong (TA = 0); confidence drops to ~0.03.
  test_logits[np.arange(60), (test_labels + 1) % 10] += 3.0
  # D_f: 3 of 4 classified right; the model still fits them like members.
  forget_labels = np.array([1, 2, 3, 4])
  forget_logits = logits_with_confidence(np.full(4, 0.99), forget_labels)
  forget_logits[0] = logits_with_confidence(np.array([0.99]), np.array([5]))[0]
  result = metrics.unlearning_metrics(
    forget_logits=forget_logits,
    forget_labels=forget_labels,
    retain_logits=retain_logits,
    retain_labels=retain_labels,
    test_logits=test_logits,
    test_labels=test_labels,
  )
  assert set(result) == {'UA', 'FA', 'RA', 'TA', 'MIA'}
  assert result['FA'] == 75.0 and result['UA'] == 25.0
  assert result['RA'] == 100.0
  assert result['TA'] == 0.0
  # Three of four D_f rows keep confidence 0.99 on the true label (members); row 0 has ~0.001.
  assert result['MIA'] == 25.0


def test_unlearning_metrics_class_wise_accuracy_split():
  eye = np.eye(3)
  test_labels = np.array([0, 0, 1, 1, 2, 2])
  test_logits = eye[[0, 1, 1, 1, 2, 0]]  # remaining classes: 3/4 right; forgotten class 2: 1/2
  mask = test_labels == 2
  retain_labels = np.array([0, 1, 0, 1, 0])
  retain_logits = eye[[0, 1, 0, 0, 0]]  # 4/5 right
  forget_labels = np.array([2, 2, 2, 2])
  forget_logits = eye[[2, 0, 1, 0]]  # 1/4 right
  result = metrics.unlearning_metrics(
    forget_logits=forget_logits,
    forget_labels=forget_labels,
    retain_logits=retain_logits,
    retain_labels=retain_labels,
    test_logits=test_logits,
    test_labels=test_labels,
    test_forget_mask=mask,
    mia_classifier='logreg',
  )
  assert result['TA_retain'] == 75.0
  assert result['TA_forget'] == 50.0
  assert result['TA'] == pytest.approx(400.0 / 6.0, rel=1e-12)
  assert result['RA'] == 80.0
  assert result['FA'] == 25.0 and result['UA'] == 75.0


def _class_wise_mia_case():
  """Members ~0.98, remaining-class test ~0.1, forgotten-class (9) test ~0.8; D_f copies the latter."""
  rng = np.random.default_rng(1)
  retain_labels = rng.integers(0, 9, 120)
  retain_logits = logits_with_confidence(rng.uniform(0.97, 0.995, 120), retain_labels)
  remaining_labels = rng.integers(0, 9, 40)
  forgotten_labels = np.full(20, 9)
  forgotten_logits = logits_with_confidence(rng.uniform(0.78, 0.82, 20), forgotten_labels)
  test_logits = np.concatenate(
    [logits_with_confidence(rng.uniform(0.08, 0.12, 40), remaining_labels), forgotten_logits]
  )
  test_labels = np.concatenate([remaining_labels, forgotten_labels])
  return dict(
    forget_logits=forgotten_logits,
    forget_labels=forgotten_labels,
    retain_logits=retain_logits,
    retain_labels=retain_labels,
    test_logits=test_logits,
    test_labels=test_labels,
  ), test_labels == 9


@pytest.mark.parametrize('classifier', ['svc', 'logreg'])
@pytest.mark.parametrize('feature', ['confidence', 'entropy'])
def test_class_wise_mia_uses_remaining_class_test_examples_as_nonmembers(feature, classifier):
  case, mask = _class_wise_mia_case()
  result = metrics.unlearning_metrics(
    test_forget_mask=mask, mia_feature=feature, mia_classifier=classifier, **case
  )
  # Non-members are only the ~0.1 examples, so D_f (~0.8) sits on the members' side.
  assert result['MIA'] == 0.0


def test_class_wise_mask_changes_the_nonmember_set():
  case, mask = _class_wise_mia_case()
  # With the whole test set as non-members, the ~0.8 forgotten-class examples train the SVC
  # as non-members, so their copies in D_f are all called non-members.
  assert metrics.unlearning_metrics(**case)['MIA'] == 100.0
  assert metrics.unlearning_metrics(test_forget_mask=mask, **case)['MIA'] == 0.0


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
  'logits, labels, match',
  [
    (np.zeros((0, 3)), np.zeros(0, int), 'logits is empty'),
    (np.zeros(3), np.zeros(3, int), r'logits must have shape \(examples, classes\)'),
    (np.zeros((3, 0)), np.zeros(3, int), 'logits has 0 classes'),
    (np.zeros((3, 2)), np.zeros(2, int), r'labels must have shape \(3,\)'),
    (np.zeros((2, 2)), np.array([0.0, 1.0]), 'labels must hold integer class ids'),
    (np.zeros((2, 2)), np.array([True, False]), 'labels must hold integer class ids'),
    (np.zeros((2, 2)), np.array([0, 2]), r'labels must lie in \[0, 2\)'),
    (np.zeros((2, 2)), np.array([-1, 0]), r'labels must lie in \[0, 2\)'),
    (np.array([[0.0, np.nan], [0.0, 1.0]]), np.array([0, 1]), 'logits contains nan or inf'),
  ],
)
def test_bad_logits_or_labels(logits, labels, match):
  with pytest.raises(ValueError, match=match):
    metrics.accuracy(logits, labels)
  with pytest.raises(ValueError, match=match):
    metrics.softmax_confidence(logits, labels)


def test_bad_entropy_and_per_class_inputs():
  with pytest.raises(ValueError, match='logits must have shape'):
    metrics.prediction_entropy(np.zeros(4))


def test_bad_mia_options_and_sets():
  retain_logits, retain_labels, test_logits, test_labels = _separated_groups()
  groups = dict(
    retain_logits=retain_logits,
    retain_labels=retain_labels,
    test_logits=test_logits,
    test_labels=test_labels,
  )
  forget = dict(forget_logits=test_logits[:3], forget_labels=test_labels[:3])
  bad_feature = r"feature must be one of \('confidence', 'entropy'\); got 'loss'"
  with pytest.raises(ValueError, match=bad_feature):
    metrics.mia_efficacy(feature='loss', **groups, **forget)
  with pytest.raises(
    ValueError, match=r"classifier must be one of \('svc', 'logreg'\); got 'forest'"
  ):
    metrics.mia_efficacy(classifier='forest', **groups, **forget)
  with pytest.raises(ValueError, match='forget_logits is empty'):
    metrics.mia_efficacy(forget_logits=np.zeros((0, 10)), forget_labels=np.zeros(0, int), **groups)
  with pytest.raises(ValueError, match=r'test_labels must have shape \(60,\)'):
    metrics.mia_efficacy(
      retain_logits=retain_logits,
      retain_labels=retain_labels,
      test_logits=test_logits,
      test_labels=test_labels[:5],
      **forget,
    )
  with pytest.raises(ValueError, match='mia_feature must be one of'):
    metrics.unlearning_metrics(mia_feature='loss', **groups, **forget)
  with pytest.raises(ValueError, match='mia_classifier must be one of'):
    metrics.unlearning_metrics(mia_classifier='forest', **groups, **forget)


@pytest.mark.parametrize(
  'mask, match',
  [
    (np.array([0, 1, 0], dtype=int), 'test_forget_mask must be a bool array of shape'),
    (np.array([False, True]), r'test_forget_mask must be a bool array of shape \(3,\)'),
    (
      np.array([True, True, True]),
      'test_forget_mask must mark some but not all test examples as forgotten-class; it marks 3 of 3',
    ),
    (np.array([False, False, False]), 'test_forget_mask must mark some but not all.*marks 0 of 3'),
  ],
)
def test_bad_test_forget_mask(mask, match):
  eye = np.eye(2)
  with pytest.raises(ValueError, match=match):
    metrics.unlearning_metrics(
      forget_logits=eye,
      forget_labels=np.array([0, 1]),
      retain_logits=eye,
      retain_labels=np.array([0, 1]),
      test_logits=eye[[0, 1, 0]],
      test_labels=np.array([0, 1, 1]),
      test_forget_mask=mask,
    )


def test_bad_kl_and_avg_gap_inputs():
  with pytest.raises(ValueError, match=r'must have the same shape; got \(2, 3\) and \(2, 4\)'):
    metrics.kl_to_reference(np.zeros((2, 3)), np.zeros((2, 4)))
  with pytest.raises(KeyError, match=r"reference lacks key\(s\) \['MIA'\]"):
    metrics.avg_gap({'UA': 1, 'RA': 2, 'TA': 3, 'MIA': 4}, {'UA': 1, 'RA': 2, 'TA': 3})
  with pytest.raises(KeyError, match=r"metrics lacks key\(s\) \['TA'\]"):
    metrics.avg_gap({'UA': 1, 'RA': 2, 'MIA': 4}, {'UA': 1, 'RA': 2, 'TA': 3, 'MIA': 4})
  with pytest.raises(ValueError, match='keys must name at least one metric'):
    metrics.avg_gap({'UA': 1}, {'UA': 1}, keys=())


def test_tow_equals_a_hand_computation():
  retrain = {'UA': 30.0, 'RA': 80.0, 'TA': 65.0}
  model = {'UA': 20.0, 'RA': 90.0, 'TA': 60.0, 'MIA': 10.0}
  # (1 - 10/100) (1 - 10/100) (1 - 5/100)
  assert metrics.tow(model, retrain) == pytest.approx(0.9 * 0.9 * 0.95, rel=1e-12)
  assert metrics.tow(retrain, retrain) == 1.0
  with pytest.raises(KeyError, match='lacks key'):
    metrics.tow({'UA': 1.0}, retrain)
