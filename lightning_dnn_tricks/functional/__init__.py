"""The maths of each method as plain functions on tensors and modules (never imports Lightning)."""

from lightning_dnn_tricks.functional.bnsr import apply_bnsr, remove_bnsr, yeo_johnson
from lightning_dnn_tricks.functional.norm_loss import (
    add_norm_loss_grad_,
    mean_abs_norm_deviation,
    norm_loss,
    row_norms,
)
from lightning_dnn_tricks.functional.weight_align import (
    apply_weight_align,
    fold_weight_align,
    remove_weight_align,
)

__all__ = [
    "add_norm_loss_grad_",
    "apply_bnsr",
    "apply_weight_align",
    "fold_weight_align",
    "mean_abs_norm_deviation",
    "norm_loss",
    "remove_bnsr",
    "remove_weight_align",
    "row_norms",
    "yeo_johnson",
]
