r"""Many-model evaluation on mnist5k, class-3 forgetting, K = 8 models per row (CPU-sized).

  python -m experiments.many_models
  python -m experiments.many_models --config.eval.num_models=512   # the challenge's scale (GPU/TPU)

Methods FT, RL, SalUn, SCRUB and SFR-on at their mnist5k defaults; the Original, Retrain and every
unlearning run use the main job's recipe (`unlearn.py`). Fields of `eval`:
`jaxunlearn.many_models.ManyModelsConfig`.
"""

import jaxunlearn
from jaxunlearn.config import to_config_dict
from jaxunlearn.many_models import ManyModelsConfig


def get_config():
  c = jaxunlearn.study_config(methods='ft,rl,salun,scrub,sfron', forget='class:3')
  c.eval = to_config_dict(ManyModelsConfig())
  return c
