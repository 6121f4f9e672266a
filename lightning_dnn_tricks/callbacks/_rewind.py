"""Helpers of the pruning callbacks: selection, rewind snapshots (weights, optimizer
hyperparameters, LR schedulers), mask broadcast and per-round metrics."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_dnn_tricks.functional.pruning import with_wrapped_optimizers
from lightning_dnn_tricks.nn.selection import select_weights as select_raw_weights


def model_snapshot(pl_module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """A detached copy of the module's ``state_dict`` (parameters and buffers)."""
    return {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


def schedule_snapshot(trainer: pl.Trainer) -> dict[str, Any]:
    """The optimizers' param-group hyperparameters and the LR schedulers' states."""
    return {
        "groups": [
            [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in o.param_groups]
            for o in trainer.optimizers
        ],
        "schedulers": [
            copy.deepcopy(config.scheduler.state_dict()) for config in trainer.lr_scheduler_configs
        ],
    }


def restore_schedule(trainer: pl.Trainer, snapshot: dict[str, Any]) -> None:
    """Put the param-group hyperparameters (lr, momentum...) and scheduler states back."""
    for optimizer, groups in zip(trainer.optimizers, snapshot["groups"], strict=True):
        for group, saved in zip(optimizer.param_groups, groups, strict=True):
            group.update(copy.deepcopy(saved))
    for config, state in zip(trainer.lr_scheduler_configs, snapshot["schedulers"], strict=True):
        config.scheduler.load_state_dict(copy.deepcopy(state))


def reset_optimizer_state(trainer: pl.Trainer) -> None:
    """Forget every optimizer's state (momentum buffers, Adam moments, step counts)."""
    for optimizer in trainer.optimizers:
        for inner in with_wrapped_optimizers(optimizer):
            inner.state.clear()


def learning_rates(trainer: pl.Trainer) -> list[list[float]]:
    """The current ``lr`` of every param group of every optimizer."""
    return [[float(g["lr"]) for g in o.param_groups] for o in trainer.optimizers]


def set_learning_rates(trainer: pl.Trainer, lrs: list[list[float]]) -> None:
    """Set the ``lr`` of every param group (the shape of :func:`learning_rates`)."""
    for optimizer, values in zip(trainer.optimizers, lrs, strict=True):
        for group, lr in zip(optimizer.param_groups, values, strict=True):
            group["lr"] = lr


def from_rank_zero(trainer: pl.Trainer, masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """``masks`` as rank 0 has them (they travel on the CPU and come back to their device)."""
    if trainer.world_size <= 1:
        return masks
    devices = [m.device for m in masks]
    received = trainer.strategy.broadcast([m.cpu() for m in masks], src=0)
    return [m.to(d) for m, d in zip(received, devices, strict=True)]


def check_layer_types(layer_types: Sequence[type[nn.Module]]) -> None:
    """Raise ``ValueError`` unless ``layer_types`` is a non-empty sequence of module classes."""
    if not layer_types or not all(
        isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types
    ):
        raise ValueError(
            f"`layer_types` must be a non-empty sequence of nn.Module classes, got {layer_types!r}."
        )


def select_weights(
    model: nn.Module,
    layer_types: Sequence[type[nn.Module]],
    include: str | None,
    exclude: str | None,
    exclude_classifier: bool,
) -> tuple[list[str], list[nn.Parameter]]:
    """Qualified names and tensors of the weights (dim >= 2) of the selected layers, by the rule
    of :func:`~lightning_dnn_tricks.nn.selection.raw_weight` (tied weights once)."""
    selected = select_raw_weights(model, layer_types, include, exclude, exclude_classifier)
    return [w.name for w in selected], [w.tensor for w in selected]


def record_metric(trainer: pl.Trainer, monitor: str, entry: dict[str, Any]) -> None:
    """Store ``monitor``'s value in ``entry``; send it and the sparsity to the loggers."""
    value = trainer.callback_metrics.get(monitor)
    if value is None:
        return
    entry[monitor] = float(value)
    metrics = {
        "pruning/round_" + monitor.replace("/", "_"): float(value),
        "pruning/round_sparsity": entry["sparsity"],
    }
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
