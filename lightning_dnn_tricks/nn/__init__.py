"""Layers, parametrisations and timm-aware module selection (plain PyTorch)."""

from lightning_dnn_tricks.nn.selection import (
    WEIGHT_LAYER_TYPES,
    SelectedLayer,
    check_pattern,
    find_classifier,
    select_layers,
)

__all__ = [
    "WEIGHT_LAYER_TYPES",
    "SelectedLayer",
    "check_pattern",
    "find_classifier",
    "select_layers",
]
