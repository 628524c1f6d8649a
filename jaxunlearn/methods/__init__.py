"""Unlearning methods: name -> ``build(ctx, cfg) -> (Program, TrainState)``.

Retrain, the gold standard, is not here: it is the training recipe run on D_r
(`jaxunlearn.experiment.train_model(kind='retrain')`).
"""

from jaxunlearn.methods import (bad_teacher, discriminative, finetune, gradient_ascent, l1_sparse, neggrad_plus,
                                random_label, salun, scrub, sfron)
from jaxunlearn.methods.base import UnlearnContext

METHODS = {
    'ft': finetune.build,
    'ga': gradient_ascent.build,
    'neggrad_plus': neggrad_plus.build,
    'rl': random_label.build,
    'l1_sparse': l1_sparse.build,
    'salun': salun.build,
    'bad_teacher': bad_teacher.build,
    'scrub': scrub.build,
    'ce_ft': discriminative.ce_ft,
    'kl_ft': discriminative.kl_ft,
    'ice_ft': discriminative.ice_ft,
    'sfron': sfron.build,
}

__all__ = ['METHODS', 'UnlearnContext']
