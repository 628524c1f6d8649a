r"""The linear-regression theory of fine-tuning for unlearning (Ding, Xu & Ji, arXiv:2410.03833v1).

  python -m experiments.linreg_theory --config.workdir=/tmp/theory
  python -m experiments.linreg_theory --config.workdir=experiments/figures/theory  # committed
  python -m experiments.linreg_theory --config.workdir=/tmp/theory --config.d=120 \
      --config.n_r=30 --config.n_f=12 --config.alphas=0.1,1 --config.x64=true

d = 400 coordinates, 100 remaining and 40 forget examples, 5 sampled tasks per setting; the
overlapping scenario shares half the coordinates, and the overlap sweep takes 11 ratios in [0, 1].
Every field and its allowed values: `jaxunlearn.theory.TheoryConfig`; `--config.workdir` has no
default.
"""

from jaxunlearn import theory
from jaxunlearn.config import to_config_dict


def get_config():
  return to_config_dict(theory.TheoryConfig())
