"""RFA-LoRA: the student starts as the teacher, the base stays bit-identical, the merged model is
the LoRA model, each loss term against a hand computation, the D_r means, compile-once, sharding,
and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import jaxunlearn
from jaxunlearn import experiment, sharding
from jaxunlearn.config import ConfigError
from jaxunlearn.data import preprocess
from jaxunlearn.loop import run
from jaxunlearn.methods import registry, rfa_lora
from tests.conftest import BATCH, tiny_config


def _cfg(**overrides):
  return rfa_lora.RfaLoraConfig(batch_size=BATCH, epochs=1, **overrides)


def _settings(ctx, plan):
  return plan.program.kinds['align'].fn.__closure__[0].cell_contents


def _batch(ctx, source, size=BATCH):
  pos = np.asarray(ctx.data.sources[source])[:size]
  x = preprocess(jnp.take(ctx.data.images, pos, axis=0), ctx.data.info, train=False, key=None)
  return {
    'image': x,
    'label': jnp.take(ctx.data.labels, pos),
    'weight': jnp.ones(len(pos)),
    'position': jnp.asarray(pos),
  }


@pytest.mark.parametrize('form', ['feature', 'branch'])
def test_student_equals_teacher_at_initialisation(tiny_context, form):
  ctx = tiny_context()
  plan = rfa_lora.build(ctx, _cfg(form=form))
  s = _settings(ctx, plan)
  x = _batch(ctx, 'forget')['image']
  logits, features, branch, _ = rfa_lora.apply_student(s, plan.state.params, ctx.original, x)
  (t_logits, t_features), _ = ctx.model_fns.apply(
    ctx.original, x, train=False, return_features=True
  )
  np.testing.assert_array_equal(logits, t_logits)
  for name in t_features:
    np.testing.assert_array_equal(features[name], t_features[name])
  assert branch and all(float(jnp.abs(r).max()) == 0.0 for r in branch.values())
  # The state is the LoRA weights alone; the optimiser holds state for nothing else.
  assert all(
    'lora_' in '.'.join(map(str, p)) for p in traverse_util.flatten_dict(plan.state.params)
  )
  assert 0 < plan.info['trainable_fraction'] < 0.5


def test_run_keeps_the_base_and_merges_exactly(tiny_context):
  ctx = tiny_context()
  plan = rfa_lora.build(ctx, _cfg(gamma=3.0))
  result = run(
    plan.program,
    plan.state,
    ctx.data,
    mesh=ctx.mesh,
    seed=0,
    constants=plan.constants,
    log_every=1000,
  )
  s = _settings(ctx, plan)
  full = rfa_lora.student_params(s, jax.device_get(result.state.params), ctx.original['params'])
  flat = traverse_util.flatten_dict(full)
  teacher_flat = traverse_util.flatten_dict(ctx.original['params'])
  for path, base in s.base_paths.items():
    np.testing.assert_array_equal(
      np.asarray(flat[path]).view(np.uint32), np.asarray(teacher_flat[base]).view(np.uint32)
    )
  merged = plan.finalize(result.state)
  assert jax.tree.structure(merged) == jax.tree.structure(ctx.original)
  x = _batch(ctx, 'forget')['image']
  lora_logits, lora_features, _, _ = rfa_lora.apply_student(s, result.state.params, ctx.original, x)
  (merged_logits, merged_features), _ = ctx.model_fns.apply(
    merged, x, train=False, return_features=True
  )
  np.testing.assert_allclose(merged_logits, lora_logits, atol=1e-5, rtol=1e-5)
  for name in merged_features:
    np.testing.assert_allclose(merged_features[name], lora_features[name], atol=1e-5, rtol=1e-5)
  assert not np.allclose(merged_logits, ctx.model_fns.apply(ctx.original, x, train=False)[0])
  jax.tree.map(np.testing.assert_array_equal, merged['batch_stats'], ctx.original['batch_stats'])


def test_means_are_direct_means(tiny_context):
  ctx = tiny_context()
  plan = rfa_lora.build(ctx, _cfg(form='branch'))
  means = plan.constants['means']
  positions = np.asarray(ctx.data.sources['retain'])
  x = preprocess(np.asarray(ctx.data.images)[positions], ctx.data.info, train=False, key=None)
  (logits, features), _ = ctx.model_fns.apply(ctx.original, x, train=False, return_features=True)
  np.testing.assert_allclose(means['logits'], logits.mean(0), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(means['probabilities'], jax.nn.softmax(logits).mean(0), atol=1e-5)
  for name in ('conv1', 'dense1'):
    np.testing.assert_allclose(means['features'][name], features[name].mean(0), atol=1e-4)
  s = _settings(ctx, plan)
  base = rfa_lora.apply_student(s, plan.state.params, ctx.original, x)[3]
  for name, out in base.items():
    np.testing.assert_allclose(means['base_outputs'][name], out.mean(0), atol=1e-4)


@pytest.mark.parametrize(
  'distance, output_target', [('mse', 'logits'), ('cosine', 'probabilities')]
)
def test_loss_terms_equal_a_hand_computation(tiny_context, distance, output_target):
  ctx = tiny_context()
  gamma = 0.7
  plan = rfa_lora.build(
    ctx, _cfg(distance=distance, output_target=output_target, gamma=gamma, layer_weights='1,0.5')
  )
  s = _settings(ctx, plan)
  # Perturb the adapters so that the student differs from the teacher.
  keys = iter(jax.random.split(jax.random.key(1), 64))
  adapters = jax.tree.map(
    lambda a: a + 0.05 * jax.random.normal(next(keys), a.shape), plan.state.params
  )
  batch = {'remain': _batch(ctx, 'retain', 16), 'forget': _batch(ctx, 'forget', 16)}
  loss, parts = rfa_lora.alignment_loss(s, adapters, batch, plan.constants)
  means = jax.device_get(plan.constants['means'])

  def feats(x, student):
    if student:
      logits, features, _, _ = rfa_lora.apply_student(s, adapters, ctx.original, x)
    else:
      (logits, features), _ = ctx.model_fns.apply(
        ctx.original, x, train=False, return_features=True
      )
    return np.asarray(logits, np.float64), {
      k: np.asarray(v, np.float64).reshape(len(x), -1) for k, v in features.items()
    }

  def d(a, b):
    b = np.broadcast_to(b.reshape(-1, a.shape[1]), a.shape)
    if distance == 'mse':
      return np.mean((a - b) ** 2, -1).mean()
    return (1 - (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)).mean()

  def d_out(z, target):
    if output_target == 'logits':
      return d(z, target)
    log_p = (
      z
      - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True))
      - z.max(-1, keepdims=True)
    )
    target = np.broadcast_to(target, z.shape)
    return (target * (np.log(np.maximum(target, 1e-12)) - log_p)).sum(-1).mean()

  softmax = lambda z: (
    np.exp(z - z.max(-1, keepdims=True))
    / np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)
  )
  sr_logits, sr = feats(batch['remain']['image'], True)
  tr_logits, tr = feats(batch['remain']['image'], False)
  sf_logits, sf = feats(batch['forget']['image'], True)
  weights = {'conv1': 1.0, 'dense1': 0.5}  # the tiny CNN's blocks
  remain = sum(w * d(sr[k], tr[k]) for k, w in weights.items())
  forget = sum(
    w * d(sf[k], np.asarray(means['features'][k], np.float64)) for k, w in weights.items()
  )
  if output_target == 'logits':
    remain_out, forget_out = d_out(sr_logits, tr_logits), d_out(sf_logits, means['logits'])
  else:
    remain_out = d_out(sr_logits, softmax(tr_logits))
    forget_out = d_out(sf_logits, np.asarray(means['probabilities'], np.float64))
  np.testing.assert_allclose(parts['remain_align'], remain, rtol=2e-4)
  np.testing.assert_allclose(parts['forget_align'], forget, rtol=2e-4)
  np.testing.assert_allclose(parts['remain_out'], remain_out, rtol=2e-4, atol=1e-6)
  np.testing.assert_allclose(parts['forget_out'], forget_out, rtol=2e-4)
  np.testing.assert_allclose(
    loss, remain + gamma * forget + remain_out + gamma * forget_out, rtol=2e-4
  )


def test_gamma_zero_removes_the_forget_terms_from_the_gradient(tiny_context):
  ctx = tiny_context()
  plan = rfa_lora.build(ctx, _cfg(gamma=0.0))
  s = _settings(ctx, plan)
  keys = iter(jax.random.split(jax.random.key(2), 64))
  adapters = jax.tree.map(
    lambda a: a + 0.05 * jax.random.normal(next(keys), a.shape), plan.state.params
  )
  remain = _batch(ctx, 'retain', 16)
  grads = [
    jax.grad(
      lambda a, f=f: rfa_lora.alignment_loss(s, a, {'remain': remain, 'forget': f}, plan.constants)[
        0
      ]
    )(adapters)
    for f in (_batch(ctx, 'forget', 16), _batch(ctx, 'retain', 16))
  ]
  jax.tree.map(np.testing.assert_array_equal, *grads)  # the D_f batch does not matter


def test_compiles_once_and_sharded_equals_one_device(tiny_context):
  assert jax.device_count() == 8, 'run the tests with 8 forced host devices'
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
    lambda name, secs, fun_name=None, **kw: (
      compiles.append(fun_name) if name == '/jax/core/compile/backend_compile_duration' else None
    )
  )
  results = {}
  for label, mesh in (
    ('one', sharding.make_mesh(jax.devices()[:1])),
    ('eight', sharding.make_mesh()),
  ):
    ctx = tiny_context(mesh=mesh)
    plan = rfa_lora.build(ctx, _cfg())
    compiles.clear()
    results[label] = run(
      plan.program,
      plan.state,
      ctx.data,
      mesh=mesh,
      seed=0,
      constants=plan.constants,
      log_every=1000,
    )
    assert compiles.count('jit(program_step)') == 1
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
    jax.device_get(results['one'].state.params),
    jax.device_get(results['eight'].state.params),
  )


@pytest.mark.parametrize(
  'overrides, message',
  [
    ({'rank': 0}, '--config.method.rfa_lora.rank=0: must be an integer >= 1.'),
    ({'alpha': 0.0}, '--config.method.rfa_lora.alpha=0.0: must be a number > 0.'),
    ({'gamma': -1.0}, '--config.method.rfa_lora.gamma=-1.0: must be a number >= 0.'),
    (
      {'targets': 'nothing_here'},
      "--config.method.rfa_lora.targets='nothing_here': selects no layer of model cnn",
    ),
    (
      {'layers': 'conv1,conv9'},
      "--config.method.rfa_lora.layers='conv1,conv9': the model has no layer 'conv9'",
    ),
    (
      {'layer_weights': '1,2,3'},
      "--config.method.rfa_lora.layer_weights='1,2,3': give one weight per aligned layer",
    ),
  ],
)
def test_bad_input_is_one_line_before_work(tmp_path, data_dir, overrides, message):
  config = jaxunlearn.study_config(methods='rfa_lora', **tiny_config(tmp_path / 'wd', data_dir))
  config.method.rfa_lora.update(overrides)
  with pytest.raises(ConfigError) as error:
    jaxunlearn.Study(config).run()
  assert str(error.value).startswith(message) and '\n' not in str(error.value), str(error.value)
  assert not list((tmp_path / 'wd').glob('*/original_s0'))


def test_default_output_target_is_the_mean_d_r_probability_vector(tiny_context):
  assert rfa_lora.RfaLoraConfig().output_target == 'probabilities'
  ctx = tiny_context()
  plan = rfa_lora.build(ctx, _cfg())
  s = _settings(ctx, plan)
  means = jax.device_get(plan.constants['means'])
  np.testing.assert_allclose(np.sum(means['probabilities']), 1.0, rtol=1e-5)
  keys = iter(jax.random.split(jax.random.key(3), 64))
  adapters = jax.tree.map(
    lambda a: a + 0.05 * jax.random.normal(next(keys), a.shape), plan.state.params
  )
  forget = _batch(ctx, 'forget', 16)
  _, parts = rfa_lora.alignment_loss(
    s, adapters, {'remain': _batch(ctx, 'retain', 16), 'forget': forget}, plan.constants
  )
  logits = np.asarray(
    rfa_lora.apply_student(s, adapters, ctx.original, forget['image'])[0], np.float64
  )
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  target = np.asarray(means['probabilities'], np.float64)
  expected = np.mean(np.sum(target * (np.log(target) - log_p), -1))
  np.testing.assert_allclose(parts['forget_out'], expected, rtol=1e-4)


def test_the_cnn_preset_adapts_the_head(tiny_context):
  plan = rfa_lora.build(tiny_context(), _cfg())
  assert set(plan.state.params['head']) == {'lora_a', 'lora_b'}
  assert set(plan.state.params) == {'convs', 'dense', 'head'}


def _identity_mlp():
  """An MLP on 3 inputs with one hidden layer of 3 and 3 classes whose hidden layer and head are
  the identity: pushing a hidden feature h >= 0 through the rest of the network gives logits h."""
  from flax import nnx

  from jaxunlearn.models import MLP
  from jaxunlearn.state import functionalize

  model = MLP(num_classes=3, input_shape=(1, 1, 3), hidden_sizes=(3,), rngs=nnx.Rngs(0))
  for layer in (model.hidden[0], model.head):
    layer.kernel[...] = jnp.eye(3)
    layer.bias[...] = jnp.zeros(3)
  return functionalize(model)


@pytest.mark.parametrize('output_target', ['logits', 'probabilities'])
def test_target_ranks_equal_a_hand_computation_and_warn(output_target, capsys):
  fns, variables = _identity_mlp()
  means = {
    'logits': np.array([2.0, 0.5, 1.0]),
    'probabilities': np.array([0.2, 0.5, 0.3]),
    'features': {'dense0': np.array([0.9, 0.1, 0.4])},
  }
  s = rfa_lora.RfaLoraRun(
    cfg=rfa_lora.RfaLoraConfig(output_target=output_target),
    teacher_fns=fns,
    student_fns=fns,
    base_paths={},
    layers=('dense0',),
    weights=(1.0,),
    tx=None,
  )
  ranks = rfa_lora.target_ranks(s, variables, means, [0, 1], (1, 1, 3))
  # dense0's mean pushed through the identity head: logits (0.9, 0.1, 0.4), class 1 last.
  assert ranks['dense0'] == {0: 1, 1: 3}
  assert ranks['output'] == ({0: 1, 1: 3} if output_target == 'logits' else {0: 3, 1: 1})
  scores = rfa_lora.report_ranks(ranks, 3, output_target)
  assert scores['target_rank/dense0/class1'] == 3.0
  assert scores['target_rank/output/class0'] == ranks['output'][0]
  out = capsys.readouterr().out
  assert (
    f'output ({output_target}) class 0: {ranks["output"][0]}, class 1: '
    f'{ranks["output"][1]}; dense0 class 0: 1, class 1: 3'
  ) in out
  warning = [line for line in out.splitlines() if line.startswith('warning: rfa_lora')]
  not_last = 0 if output_target == 'logits' else 1  # the class the output target puts first
  assert len(warning) == 1 and f'class {not_last}: rank 1 of 3' in warning[0], out
  # Every forgotten class last under the output target: no warning, whatever the layers.
  rfa_lora.report_ranks({'output': {1: 3}, 'dense0': {1: 1}}, 3, output_target)
  assert 'warning' not in capsys.readouterr().out


def test_the_diagnostic_goes_into_the_run_scores(tiny_context):
  plan = rfa_lora.build(tiny_context(), _cfg())
  ranks = {k: v for k, v in plan.info.items() if k.startswith('target_rank/')}
  assert set(ranks) == {f'target_rank/{t}/class3' for t in ('output', 'conv1', 'dense1')}
  assert all(1 <= r <= 10 for r in ranks.values())
  # The forgotten class is absent from D_r, so the mean D_r softmax gives it the smallest share
  # here (the tiny CNN on digits), as it did on mnist5k and CIFAR-10.
  assert ranks['target_rank/output/class3'] == 10


def test_class_scope_is_refused_for_class_forgetting(tiny_context):
  with pytest.raises(ConfigError, match="target_scope='class': D_r has no example of class 3"):
    rfa_lora.build(tiny_context(), _cfg(target_scope='class'))


def test_class_scope_targets_are_each_class_s_own_d_r_means(tmp_path, data_dir):
  prepared = experiment.prepare(tiny_config(tmp_path / 'wd', data_dir, forget='random:0.1'))
  fns, variables = prepared.model(0)
  ctx = prepared.context(fns, variables, seed=0, batch_size=BATCH)
  plan = rfa_lora.build(ctx, _cfg(target_scope='class'))
  means = plan.constants['means']
  positions = np.asarray(ctx.data.sources['retain'])
  labels = np.asarray(ctx.data.labels)[positions]
  x = preprocess(np.asarray(ctx.data.images)[positions], ctx.data.info, train=False, key=None)
  (logits, features), _ = fns.apply(variables, x, train=False, return_features=True)
  probabilities = np.asarray(jax.nn.softmax(logits))
  assert means['probabilities'].shape == (10, 10)
  for c in range(10):
    np.testing.assert_allclose(
      means['probabilities'][c], probabilities[labels == c].mean(0), atol=1e-5
    )
    np.testing.assert_allclose(
      means['features']['conv1'][c], np.asarray(features['conv1'])[labels == c].mean(0), atol=1e-4
    )
  forget_labels = jnp.asarray([3, 7, 3])
  targets = rfa_lora.forget_targets(_settings(ctx, plan), means, forget_labels)
  np.testing.assert_array_equal(targets['probabilities'][1], means['probabilities'][7])
  assert targets['features']['conv1'].shape[0] == 3


def test_random_forgetting_selects_the_sample_preset():
  config = jaxunlearn.study_config()
  rows, picked = registry.method_rows(
    config.method, 'rfa_lora', forget='random:0.1', dataset='digits'
  )
  assert picked == {'rfa_lora': 'sample'} and rows[0][2] == rfa_lora.sample()
  # mnist5k's tuned preset starts from it (`tuned_presets`).
  rows, picked = registry.method_rows(
    config.method, 'rfa_lora', forget='random:0.1', dataset='mnist5k'
  )
  assert picked == {'rfa_lora': 'random_mnist5k'} and rows[0][2].distance == 'cosine'
  rows, picked = registry.method_rows(config.method, 'rfa_lora', forget='class:3')
  assert rows[0][2] == rfa_lora.RfaLoraConfig() and rows[0][2].gamma != rfa_lora.sample().gamma
  rows, picked = registry.method_rows(
    config.method, 'rfa_lora', forget='random:0.1', dataset='imagefolder:/data/cifar10-jpeg/'
  )
  assert picked == {'rfa_lora': 'sample_cifar10'} and rows[0][2] == rfa_lora.sample_cifar10()
  assert rows[0][2].gamma != rfa_lora.sample().gamma
  config.method.rfa_lora.preset = 'defaults'
  rows, _ = registry.method_rows(config.method, 'rfa_lora', forget='random:0.1')
  assert rows[0][2] == rfa_lora.RfaLoraConfig()


def test_sample_readings_group_changes_one_reading_per_row():
  config = jaxunlearn.study_config()
  rows, picked = registry.method_rows(
    config.method, 'rfa_lora_sample', forget='random:0.1', dataset='digits'
  )
  assert picked == {'rfa_lora': 'sample'}
  configs = {row: cfg for row, method, cfg in rows if method == 'rfa_lora'}
  base = rfa_lora.sample()
  assert configs['rfa_lora'] == base and base.distance == 'cosine'
  assert configs['rfa_lora-mse'] == base.replace(distance='mse')
  assert configs['rfa_lora-class_scope'] == base.replace(target_scope='class')
  assert configs['rfa_lora-class_defaults'] == rfa_lora.RfaLoraConfig()
