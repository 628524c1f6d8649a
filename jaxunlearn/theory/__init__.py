"""Linear-regression theory of fine-tuning for unlearning (Ding, Xu & Ji, arXiv:2410.03833v1).

`data` samples the tasks, `linreg` holds the closed forms, `dynamics` the gradient-descent runs,
`sweeps` the settings of the figures (`TheoryConfig`, `compute`, `format_table`) and `plots` the
figures themselves (`write_outputs` saves them with every plotted number).
"""

from jaxunlearn.theory.data import LinRegTask, TaskSpec, make_task, make_tasks
from jaxunlearn.theory.dynamics import Trajectory, default_learning_rate, gradient_descent, simulate
from jaxunlearn.theory.linreg import (
  REMEDY_OPTIONS,
  closed_form_endpoints,
  endpoint_losses,
  finetune,
  gap_to_golden,
  golden,
  min_change_solution,
  min_norm_lstsq,
  mse,
  pretrained,
  project_row_space,
  regularized_finetune,
  regularized_objective,
  remaining_loss,
  remedy_keep_mask,
  remedy_start,
  unlearning_loss,
)
from jaxunlearn.theory.plots import (
  plot_alpha_sweep,
  plot_loss_curves,
  plot_overlap_sweep,
  write_outputs,
)
from jaxunlearn.theory.sweeps import (
  TheoryConfig,
  alpha_sweep,
  compute,
  endpoint_table,
  format_table,
  loss_curves,
  overlap_sweep,
  task_spec,
)

__all__ = [
  'LinRegTask',
  'REMEDY_OPTIONS',
  'TaskSpec',
  'TheoryConfig',
  'Trajectory',
  'alpha_sweep',
  'closed_form_endpoints',
  'compute',
  'default_learning_rate',
  'endpoint_losses',
  'endpoint_table',
  'finetune',
  'format_table',
  'gap_to_golden',
  'golden',
  'gradient_descent',
  'loss_curves',
  'make_task',
  'make_tasks',
  'min_change_solution',
  'min_norm_lstsq',
  'mse',
  'overlap_sweep',
  'plot_alpha_sweep',
  'plot_loss_curves',
  'plot_overlap_sweep',
  'pretrained',
  'project_row_space',
  'regularized_finetune',
  'regularized_objective',
  'remaining_loss',
  'remedy_keep_mask',
  'remedy_start',
  'simulate',
  'task_spec',
  'unlearning_loss',
  'write_outputs',
]
