r"""A small ViT on mnist5k (patch 4, width 64, depth 4, 4 heads), forgetting class 3: RFA-LoRA on
the attention query and value projections, against FT and SalUn.

  python -m experiments.unlearn --config=experiments/configs/unlearn_vit.py

Smaller than ViT-Tiny (width 192, depth 12) so that it trains in minutes on 2 CPU cores; the
recipe is AdamW (lr 1e-3, weight decay 0.05, cosine) as usual for ViTs, 15 epochs. RFA-LoRA runs
its 'vit' preset (rank 16). FT and SalUn fine-tune with AdamW at lr 1e-4: with their mnist5k
SGD settings (lr 0.01-0.02, momentum 0.9) FT wrecked this ViT (RA 43.7 after 5 epochs).
"""

import jaxunlearn
from jaxunlearn.config import to_config_dict


def get_config():
  # One CPU device, as the committed table ran (no layout probe).
  c = jaxunlearn.study_config(
    model='vit', forget='class:3', methods='ft,salun,rfa_lora', num_devices=1
  )
  c.model_kwargs.update(patch_size=4, width=64, depth=4, num_heads=4, mlp_dim=128)
  c.optimizer.update(name='adamw', lr=1e-3, weight_decay=0.05)
  c.method.rfa_lora = to_config_dict(jaxunlearn.methods.get('rfa_lora').preset('vit'))
  for name in ('ft', 'salun'):
    c.method[name].optimizer.update(name='adamw', lr=1e-4, weight_decay=0.05)
  return c
