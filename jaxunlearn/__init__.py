"""jaxunlearn: machine unlearning in JAX/Flax (NNX), on one sharded training loop.

The public API: `Study` (a config to a table; every run saved and reused), `study_config` and
`training_config` (the configs the binaries override with flags), `methods` (the registry of
unlearning methods), `ConfigError` (a bad config value, one line) and `write_json` (atomic).
"""

__version__ = '0.1.0'

from jaxunlearn.config import ConfigError, training_config
from jaxunlearn.files import write_json
from jaxunlearn.methods import registry as methods
from jaxunlearn.study import Study, study_config

__all__ = ['ConfigError', 'Study', 'methods', 'study_config', 'training_config', 'write_json']
