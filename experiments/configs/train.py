"""Training of the original and the retrained model: small CNN on the offline `mnist5k` digits.

Use: python -m experiments.train --config=experiments/configs/train.py --config.epochs=10
"""

import ml_collections


def optimizer(name='sgd', lr=0.05, schedule='cosine', momentum=0.9, weight_decay=5e-4,
              grad_clip=0.0):
  return ml_collections.ConfigDict(dict(
      name=name, lr=lr, schedule=schedule, momentum=momentum, weight_decay=weight_decay,
      grad_clip=grad_clip, nesterov=False, lr_decay_steps=(), lr_decay_factor=0.1))


def get_config():
  c = ml_collections.ConfigDict()
  c.workdir = 'workdir'
  # mnist5k | digits | any TFDS image dataset with a ClassLabel label (e.g. cifar10) |
  # imagefolder:PATH (PATH/train/<class>/*.jpg|jpeg|png and PATH/test/<class>/...)
  c.dataset = 'mnist5k'
  c.data_dir = ''             # '' = $JAXUNLEARN_DATA_DIR or ~/.cache/jaxunlearn/tfds
  c.test_split = 'test'       # the split evaluated as the test set (e.g. 'validation')
  c.image_size = ''           # 'H,W' resizes every image on load (needed when their sizes differ)
  c.augment = 'auto'          # crop+flip: auto (colour images >= 32x32, not SVHN) | true | false
  # N > 0: train on N train examples, stratified by class, drawn with a fixed seed (the same for
  # every split seed, since the original model is shared); 0: the whole train split.
  c.train_subset = 0
  c.model = 'cnn'
  c.model_kwargs = ml_collections.ConfigDict()
  c.forget = 'random:0.1'     # random:FRACTION | random:COUNT | class:K[,K...] | indices:PATH.npy
  c.split_seed = 0
  c.seed = 0
  c.train = 'both'            # original | retrain | both
  c.num_devices = 0           # data-parallel devices: 0 = every device JAX sees
  c.batch_size = 128
  c.epochs = 15
  c.optimizer = optimizer()
  c.checkpoint_every_steps = 200
  c.keep_checkpoints = 2
  c.best_metric = 'test_accuracy'
  c.log_every = 50
  c.eval_batch_size = 512
  c.mia_feature = 'confidence'
  c.mia_classifier = 'svc'
  c.distributed = ml_collections.ConfigDict(dict(coordinator_address='', num_processes=0,
                                                 process_id=0))
  return c
