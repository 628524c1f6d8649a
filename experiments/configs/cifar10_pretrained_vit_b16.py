r"""ImageNet-pre-trained ViT-B/16 (timm) fine-tuned on CIFAR-10, then unlearned (GPU/TPU).

  python -m experiments.prepare_cifar10 --archive=PATH/cifar10-jpeg.tar.gz
  python -m experiments.unlearn --config=experiments/configs/cifar10_pretrained_vit_b16.py \
      --config.init=PATH/vit_base_patch16_224.safetensors

The weight file is timm's `vit_base_patch16_224` state dict saved with
`safetensors.torch.save_file(timm.create_model('vit_base_patch16_224', pretrained=True)
.state_dict(), PATH)`. The Original and Retrain start from it with a fresh 10-class head and are
fine-tuned (Original on D, Retrain on D_r) by the same recipe: 5 epochs, AdamW lr 1e-4 (weight
decay 0.05, cosine), batch 128, images resized once to 224x224 (the position embedding's grid),
crop + flip, bfloat16 compute. The methods run their 'vit' presets where they have one (RFA-LoRA:
rank 16 on the attention query and value projections) on random 10%, one seed.
"""

import os

import jaxunlearn
from jaxunlearn.data import default_data_dir

VIT_B16 = {
  'patch_size': 16,
  'width': 768,
  'depth': 12,
  'num_heads': 12,
  'mlp_dim': 3072,
  'gelu_approximate': False,
  'pooling': 'cls',
}


def get_config():
  folder = os.path.join(default_data_dir(), 'downloads', 'cifar10-jpeg')
  c = jaxunlearn.study_config(
    preset='vit',
    dataset=f'imagefolder:{folder}',
    image_size='224,224',
    model='vit',
    init_layout='timm:vit_base_patch16_224',
    epochs=5,
    batch_size=128,
    compute_dtype='bfloat16',
    forget='random:0.1',
    seeds='0',
    methods='ft,rl,salun,sfron,rfa_lora',
    checkpoint_every_steps=500,
    log_every=50,
  )
  c.model_kwargs = dict(VIT_B16)
  c.optimizer.update(name='adamw', lr=1e-4, schedule='cosine', weight_decay=0.05)
  return c
