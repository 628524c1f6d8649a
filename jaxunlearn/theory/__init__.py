"""Linear-regression theory of fine-tuning for unlearning (Ding, Xu & Ji, arXiv:2410.03833v1)."""

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
    remedy_finetune,
    remedy_keep_mask,
    remedy_start,
    unlearning_loss,
)
