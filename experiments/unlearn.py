r"""The main job: unlearn with every method and compare each with Retrain.

  python -m experiments.unlearn                       # all methods, mnist5k, small CNN, class 3
  python -m experiments.unlearn --config.methods=ft,salun --config.seeds=0,1,2 \
      --config.forget=class:3

Finds (or trains) the Original and Retrain models, runs (or reuses) each method row for each seed,
and writes results.json, results.md and results.png into the experiment directory
({workdir}/{dataset}-{model}/{forget}-split{k}/), printing the table at the end. Killed and run
again, it resumes: completed runs are reused, an interrupted one continues from its checkpoint.
"""

import os

import jaxunlearn
from jaxunlearn import cli

_CONFIG = cli.define_config(
  os.path.join(os.path.dirname(__file__), 'configs', 'unlearn.py'), 'Unlearning config file.'
)


def main(argv):
  del argv
  study = jaxunlearn.Study(_CONFIG.value)
  study.run()
  print(f'\n{study.title()}\n{study.table()}\n\n{study.table_note()}\n')
  print(f'Results in {study.experiment_dir} (wall time {study.wall_seconds:.0f} s)')


if __name__ == '__main__':
  cli.run(main)
