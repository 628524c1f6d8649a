"""Unlearning methods. Each method is one module of this package that registers itself
(`registry.register`); importing the package imports every module, so the registry holds them all,
then adds the tuned presets (`tuned_presets`).

Retrain, the gold standard, is not here: it is the training recipe run on D_r.
"""

import importlib
import pkgutil

from jaxunlearn.methods import registry, tuned_presets
from jaxunlearn.methods.base import Plan, UnlearnContext

for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f'{__name__}.{_module.name}')
for _record in tuned_presets.RECORDS:
  registry.add_tuned_presets(_record)

__all__ = ['Plan', 'UnlearnContext', 'registry']
