r"""Many-model evaluation on 2 CPU cores: digits, an MLP, random 10% forgetting, K = 128 models
per row.

  python -m experiments.many_models
  python -m experiments.many_models --config.eval.num_models=512   # the challenge's scale
  python -m experiments.many_models --config.dataset=mnist5k --config.model=cnn  # GPU/TPU sized

Random forgetting, as the NeurIPS 2023 score was designed for: under class forgetting the
retrained and unlearned confidences on D_f separate perfectly and every method scores about 0.
K = 128 Retrain models, a control set of 128 more, 128 Originals and 128 runs of each method, so
that epsilons up to ceil(log 127) = 5 score (10 buckets). The model was chosen by measurement: an
MLP (two hidden layers of 128) on scikit-learn's 1,437 training digits trains 128 models in a few
seconds as one vmapped program per device (one JAX CPU device per core), where the small CNN on
mnist5k took about 100 times longer per model. Method settings are their defaults. Fields of
`eval`: `jaxunlearn.many_models.ManyModelsConfig`; results in
{workdir}/digits-mlp/random-0.1-split0/many_K128/.
"""

import jaxunlearn
from jaxunlearn.config import to_config_dict
from jaxunlearn.many_models import ManyModelsConfig


def get_config():
  c = jaxunlearn.study_config(
    dataset='digits',
    model='mlp',
    forget='random:0.1',
    epochs=20,
    methods='ft,ga,neggrad_plus,rl,salun,scrub,sfron,rfa_lora,ssd',
    workdir='workdir/many_models',
    num_devices=0,  # every CPU device holds models; no single-model layout to probe
  )
  c.model_kwargs.update(hidden_sizes=(128, 128))
  c.eval = to_config_dict(ManyModelsConfig())
  return c
