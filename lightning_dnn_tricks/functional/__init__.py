"""The maths of each method as plain functions on tensors and modules (never imports Lightning)."""

from lightning_dnn_tricks.functional.bnsr import apply_bnsr, remove_bnsr, yeo_johnson
from lightning_dnn_tricks.functional.norm_loss import (
    add_norm_loss_grad_,
    mean_abs_norm_deviation,
    norm_loss,
    row_norms,
)
from lightning_dnn_tricks.functional.pruning import (
    SparsityReport,
    apply_masks_,
    apply_masks_everywhere_,
    magnitude_masks,
    make_permanent,
    mask_gradients_,
    mask_jaccard,
    pruned_state_dict,
    sparsity_report,
    target_sparsity,
)
from lightning_dnn_tricks.functional.weight_align import (
    apply_weight_align,
    fold_weight_align,
    remove_weight_align,
)
from lightning_dnn_tricks.functional.weight_norm_supervision import (
    ContractionReport,
    SpectralNormEstimate,
    WeightOperator,
    add_spectral_penalty_grad_,
    contraction_check,
    power_iteration,
    project_spectral_norm_,
    rnn_step,
    spectral_penalty,
    tanh_rnn_norms,
    weight_operator,
)

__all__ = [
    "ContractionReport",
    "SparsityReport",
    "SpectralNormEstimate",
    "WeightOperator",
    "add_norm_loss_grad_",
    "add_spectral_penalty_grad_",
    "apply_bnsr",
    "apply_masks_",
    "apply_masks_everywhere_",
    "apply_weight_align",
    "contraction_check",
    "fold_weight_align",
    "magnitude_masks",
    "make_permanent",
    "mask_gradients_",
    "mask_jaccard",
    "mean_abs_norm_deviation",
    "norm_loss",
    "power_iteration",
    "project_spectral_norm_",
    "pruned_state_dict",
    "remove_bnsr",
    "remove_weight_align",
    "rnn_step",
    "row_norms",
    "sparsity_report",
    "spectral_penalty",
    "tanh_rnn_norms",
    "target_sparsity",
    "weight_operator",
    "yeo_johnson",
]
