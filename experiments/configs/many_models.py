r"""Many-model evaluation on mnist5k, class-3 forgetting, K = 8 models per row (CPU-sized).

  python -m experiments.many_models
  python -m experiments.many_models --config.eval.num_models=512   # the challenge's scale (GPU/TPU)

Methods FT, RL, SalUn, SCRUB and SFR-on at their mnist5k defaults. Sized so that the whole table
finishes within 15 minutes on 2 CPU cores: a narrower CNN (16 and 32 channels, 64 hidden units,
about a third of the main job's compute), 10 training epochs, a relearn cap of 50 steps; its own
workdir, since a model directory holds one architecture and recipe. Fields of `eval`:
`jaxunlearn.many_models.ManyModelsConfig`.
"""

import jaxunlearn
from jaxunlearn.config import to_config_dict
from jaxunlearn.many_models import ManyModelsConfig


def get_config():
  c = jaxunlearn.study_config(methods='ft,rl,salun,scrub,sfron', forget='class:3', epochs=10,
                              workdir='workdir/many_models')
  c.model_kwargs.update(channels=(16, 32), dense_width=64)
  c.eval = to_config_dict(ManyModelsConfig(relearn_steps=50))
  return c
