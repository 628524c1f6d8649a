r"""Many-model evaluation: the NeurIPS 2023 forgetting score with its interval, KLOM, relearn
time, ToW and Avg. Gap, against a control set of Retrain models and a set of Originals.

  python -m experiments.many_models                                # K = 128, CPU-sized
  python -m experiments.many_models --config.eval.num_models=256 --config.methods=ft,salun

Trains K Retrain models, K control Retrain models, K Originals and, for every method, K
unlearning runs from one Original, each set as one program (the model axis spread over devices:
on CPU one JAX device per core), and writes many_models.json/.md/.png (the per-example epsilons)
into {experiment_dir}/many_K{K}/. Config: configs/many_models.py.
"""

import os

import jaxunlearn
from jaxunlearn import cli, many_models, report
from jaxunlearn.config import from_config_dict

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'many_models.py'),
  'Many-model evaluation config file.',
)


def main(argv):
  del argv
  config = _CONFIG.value
  cfg = from_config_dict(many_models.ManyModelsConfig, config.eval, '--config.eval')
  study = jaxunlearn.Study(config)
  many_models.model_mesh(cfg)
  payload = study.many_models(cfg)
  print(report.many_model_table(payload['rows']))
  print(
    f'\n{report.MANY_MODEL_NOTE}\n\nResults in {study.experiment_dir}/many_K{cfg.num_models} '
    f'(wall time {payload["wall_seconds"]:.0f} s)'
  )


if __name__ == '__main__':
  cli.run(main)
