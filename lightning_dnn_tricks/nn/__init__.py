"""Layers, parametrisations and timm-aware module selection (plain PyTorch)."""

from lightning_dnn_tricks.nn.bnsr import BNSR1d, BNSR2d, BNSRAct2d, bnsr_class_for
from lightning_dnn_tricks.nn.bnsr_warps import IdentityWarp, Warp, YeoJohnsonWarp
from lightning_dnn_tricks.nn.selection import (
    WEIGHT_LAYER_TYPES,
    SelectedLayer,
    check_pattern,
    find_classifier,
    select_layers,
)
from lightning_dnn_tricks.nn.surgery import (
    LayerSelection,
    SkippedLayer,
    SurgerySummary,
    applied_tags,
    register_parametrization_on,
    replace_modules,
    resolve_selection,
    share_state,
    update_optimizer_params,
)
from lightning_dnn_tricks.nn.weight_align import WeightAlignParametrization, is_weight_aligned

__all__ = [
    "WEIGHT_LAYER_TYPES",
    "BNSR1d",
    "BNSR2d",
    "BNSRAct2d",
    "IdentityWarp",
    "LayerSelection",
    "SelectedLayer",
    "SkippedLayer",
    "SurgerySummary",
    "Warp",
    "WeightAlignParametrization",
    "YeoJohnsonWarp",
    "applied_tags",
    "bnsr_class_for",
    "check_pattern",
    "find_classifier",
    "is_weight_aligned",
    "register_parametrization_on",
    "replace_modules",
    "resolve_selection",
    "select_layers",
    "share_state",
    "update_optimizer_params",
]
