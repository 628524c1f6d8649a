r"""Many-model evaluation: the NeurIPS 2023 forgetting score, KLOM and relearn time.

  python -m experiments.many_models                                  # K = 8, CPU-sized
  python -m experiments.many_models --config.eval.num_models=32 --config.methods=ft,salun

Trains K Retrain models and, for every method, K unlearning runs from one Original, each set as
one vmapped program (the model axis sharded over devices), and writes many_models.json/.md/.png
(the per-example epsilons) into {experiment_dir}/many_K{K}/. Config: configs/many_models.py.
"""

import os

import jaxunlearn
from jaxunlearn import cli, many_models
from jaxunlearn.config import from_config_dict

_CONFIG = cli.define_config(
    os.path.join(os.path.dirname(__file__), 'configs', 'many_models.py'),
    'Many-model evaluation config file.')


def main(argv):
  del argv
  config = _CONFIG.value
  cfg = from_config_dict(many_models.ManyModelsConfig, config.eval, '--config.eval')
  study = jaxunlearn.Study(config)
  many_models.model_mesh(cfg)
  payload = many_models.run(study, cfg)
  print(many_models.markdown_table(payload['rows']))
  print(f'\n{many_models.TABLE_NOTE}\n\nResults in {study.experiment_dir}/many_K{cfg.num_models} '
        f'(wall time {payload["wall_seconds"]:.0f} s)')


if __name__ == '__main__':
  cli.run(main)
