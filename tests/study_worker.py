"""A tiny study in its own process, for the kill-and-resume tests.

  python -m tests.study_worker WORKDIR DATA_DIR
Runs FT then SFR-on (checkpointing every 10 of its 40 iterations) on `digits`, one seed, and
writes the results files.
"""

import sys

import jaxunlearn
from tests.conftest import tiny_config

METHODS = 'ft,sfron'


def config(workdir, data_dir):
  c = jaxunlearn.study_config(methods=METHODS, plot=False)
  c.update({k: v for k, v in tiny_config(workdir, data_dir).items() if k in c})
  c.model_kwargs = tiny_config(workdir, data_dir).model_kwargs
  c.method.ft.update(epochs=1, batch_size=64)
  c.method.sfron.update(iterations=40, batch_size=64, saliency_batch_size=64)
  return c


def main():
  study = jaxunlearn.Study(config(*sys.argv[1:3]))
  study.run()
  print(study.table(), flush=True)


if __name__ == '__main__':
  main()
