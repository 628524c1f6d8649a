r"""Figures of the linear-regression theory of "Why fine-tuning struggles with forgetting" (v1).

  python -m experiments.linreg_theory --config.workdir=/tmp/theory

Writes into --config.workdir (each file atomically; `jaxunlearn.theory.write_outputs`):
  loss_curves.png    remaining and unlearning loss along gradient-descent fine-tuning, for distinct
                     and overlapping features (pretrained, FT, golden, both remedies);
  overlap_sweep.png  unlearning loss and gap to golden against the overlap ratio d_lap / d;
  alpha_sweep.png    regularised FT: unlearning and remaining loss against alpha in (0, 1];
  results.json       every plotted number (mean, min and max over seeds) and the run's config;
and prints a table of the end-point losses. Bands in the figures span min to max over seeds.
Config: configs/linreg_theory.py (`jaxunlearn.theory.TheoryConfig`).
"""

import os
import time

from jaxunlearn import cli, theory
from jaxunlearn.config import from_config_dict

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'linreg_theory.py'),
  'Linear-regression theory config file.',
)


def main(argv):
  del argv
  config = from_config_dict(theory.TheoryConfig, _CONFIG.value, '--config')
  start = time.time()
  results = theory.compute(config)
  paths = theory.write_outputs(results, config.workdir)
  print(theory.format_table(results))
  print(f'Wrote {", ".join(paths)} in {time.time() - start:.1f} s.')


if __name__ == '__main__':
  cli.run(main)
