"""The maths of each method as plain functions on tensors and modules (never imports Lightning)."""

from lightning_dnn_tricks.functional.norm_loss import (
    add_norm_loss_grad_,
    mean_abs_norm_deviation,
    norm_loss,
    row_norms,
)

__all__ = ["add_norm_loss_grad_", "mean_abs_norm_deviation", "norm_loss", "row_norms"]
