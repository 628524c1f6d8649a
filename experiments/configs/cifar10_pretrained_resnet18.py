r"""ImageNet-pre-trained ResNet-18 (torchvision) fine-tuned on CIFAR-10, then unlearned (GPU/TPU).

  python -m experiments.prepare_cifar10 --archive=PATH/cifar10-jpeg.tar.gz
  python -m experiments.unlearn --config=experiments/configs/cifar10_pretrained_resnet18.py \
      --config.init=PATH/resnet18.safetensors

The weight file is torchvision's `resnet18` state dict saved with
`safetensors.torch.save_file(torchvision.models.resnet18(weights='DEFAULT').state_dict(), PATH)`
(or its `.pth` where torch is installed). The Original and Retrain start from it with a fresh
10-class head and are fine-tuned, the Original on D and Retrain on D_r, by the same recipe: 10
epochs, SGD lr 0.01 (momentum 0.9, weight decay 5e-4, cosine), batch 256, images resized once to
224x224 (the resolution the weights were trained at), crop + flip, bfloat16 compute. The methods run
their 'cifar10_resnet18' presets on random 10%, one seed. The 50,000 images at 224x224 take 7.5 GB
of device memory (uint8).
"""

import os

import jaxunlearn
from jaxunlearn.data import default_data_dir


def get_config():
  folder = os.path.join(default_data_dir(), 'downloads', 'cifar10-jpeg')
  c = jaxunlearn.study_config(
    preset='cifar10_resnet18',
    dataset=f'imagefolder:{folder}',
    image_size='224,224',
    model='resnet18',
    init_layout='torchvision:resnet18',
    epochs=10,
    batch_size=256,
    compute_dtype='bfloat16',
    forget='random:0.1',
    seeds='0',
    methods='ft,rl,salun,sfron,rfa_lora',
    checkpoint_every_steps=500,
    log_every=50,
  )
  c.model_kwargs = {'stem': 'imagenet'}
  c.optimizer.update(lr=0.01, schedule='cosine', momentum=0.9, weight_decay=5e-4)
  return c
