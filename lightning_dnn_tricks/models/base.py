"""Shared parts of the reference LightningModules: default optimizer, step loop, optimizers."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torch.optim.lr_scheduler import ReduceLROnPlateau
from torchmetrics import Metric

from lightning_dnn_tricks.functional.importance_sampling import (
    EXAMPLE_KEY,
    importance_weighted_mean,
    is_importance_batch,
)
from lightning_dnn_tricks.validation import check_choice

Stage = Literal["train", "val", "test"]
SchedulerInterval = Literal["epoch", "step"]
STAGES: tuple[Stage, ...] = ("train", "val", "test")
SCHEDULER_INTERVALS: tuple[SchedulerInterval, ...] = ("epoch", "step")

#: Metric that ``ReduceLROnPlateau`` schedulers monitor.
PLATEAU_MONITOR = "val/loss"


def adamw(params: Iterable[Any]) -> torch.optim.Optimizer:
    """Default optimizer of the reference modules: ``AdamW(lr=1e-3, weight_decay=1e-2)``.

    A function rather than the ``torch.optim.AdamW`` class on purpose: with a class default,
    jsonargparse expands AdamW's arguments into the config and keeps the ones another optimizer
    shares when a YAML only changes ``class_path`` (``SGD`` would silently get
    ``weight_decay=0.01``). In a config it appears as ``lightning_dnn_tricks.models.adamw``.

    Args:
        params: parameters or parameter groups to optimise.

    Examples:
        >>> import torch
        >>> adamw(torch.nn.Linear(2, 1).parameters()).defaults["lr"]
        0.001
    """
    return torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)


def check_callable(name: str, value: Any, *, optional: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is callable (or ``None`` when ``optional``)."""
    if value is None and optional:
        return
    if not callable(value):
        kind = "a callable or None" if optional else "a callable"
        raise ValueError(f"`{name}` must be {kind}, got {value!r}.")


class ExampleLosses(NamedTuple):
    """Per-example losses of a batch, for importance-weighted training.

    Attributes:
        losses: one loss per example ``(B,)``.
        preds: the predictions the stage metric sees.
        target: the targets the stage metric sees.
        logits: class logits ``(B, ..., C)`` for the ``"logit_grad"`` score (``None``: none).
        classes: the class targets ``(B, ...)`` matching ``logits``.
        label_smoothing: the cross-entropy's label smoothing.
    """

    losses: torch.Tensor
    preds: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor | None = None
    classes: torch.Tensor | None = None
    label_smoothing: float = 0.0


class SupervisedModule(pl.LightningModule):
    """Base of the reference modules: ``(x, y)`` batches, one loss, one metric per stage.

    Subclasses implement ``compute_loss`` and call ``build_metrics``. Every stage logs
    ``{stage}/loss`` and ``{stage}/{metric_name}`` (``train`` per step, ``val``/``test`` per epoch).

    Importance batches (adaptive importance sampling, see
    :class:`~lightning_dnn_tricks.callbacks.AdaptiveImportanceSampling`): a training batch
    ``{"example": (x, y), "weight": ...}`` is trained on
    :func:`~lightning_dnn_tricks.functional.importance_weighted_mean` of the per-example losses
    of :meth:`compute_example_losses` (which subclasses implement to support it); in the other
    stages such a batch gets the plain ``compute_loss`` of its ``"example"``.

    Args:
        optimizer: callable that builds the optimizer from the parameters.
        scheduler: optional callable that builds a learning-rate scheduler from the optimizer.
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
    """

    metrics: nn.ModuleDict
    metric_name: str

    def __init__(
        self,
        optimizer: OptimizerCallable,
        scheduler: LRSchedulerCallable | None,
        scheduler_interval: SchedulerInterval,
    ) -> None:
        super().__init__()
        check_callable("optimizer", optimizer)
        check_callable("scheduler", scheduler, optional=True)
        check_choice("scheduler_interval", scheduler_interval, SCHEDULER_INTERVALS)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval

    def build_metrics(self, metric_name: str, factory: Callable[[], Metric]) -> None:
        """Create one metric per stage (separate states), logged as ``{stage}/{metric_name}``."""
        self.metric_name = metric_name
        self.metrics = nn.ModuleDict({f"{stage}_{metric_name}": factory() for stage in STAGES})

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(loss, predictions, targets)`` for a batch; the metric sees the last two."""
        raise NotImplementedError

    def compute_example_losses(self, batch: Any) -> ExampleLosses:
        """Per-example losses of an ``(x, y)`` batch (needed for importance sampling)."""
        raise NotImplementedError(
            f"{type(self).__name__} does not support importance-sampled batches: implement "
            "compute_example_losses (per-example losses) or train without "
            "AdaptiveImportanceSampling."
        )

    def _shared_step(self, batch: Any, stage: Stage) -> torch.Tensor:
        if is_importance_batch(batch) and stage == "train":
            out = self.compute_example_losses(batch[EXAMPLE_KEY])
            loss = importance_weighted_mean(
                out.losses,
                batch,
                logits=out.logits,
                targets=out.classes,
                label_smoothing=out.label_smoothing,
            )
            preds, target = out.preds, out.target
        else:
            example = batch[EXAMPLE_KEY] if is_importance_batch(batch) else batch
            loss, preds, target = self.compute_loss(example)
        metric = cast(Metric, self.metrics[f"{stage}_{self.metric_name}"])
        metric(preds.detach(), target)
        per_epoch = stage != "train"
        options: dict[str, Any] = {"on_step": not per_epoch, "on_epoch": per_epoch}
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", **options)
        self.log(f"{stage}/{self.metric_name}", metric, prog_bar=stage == "val", **options)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Compute and log the training loss and metric of one batch; return the loss."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Accumulate the validation loss and metric (logged per epoch)."""
        return self._shared_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """Accumulate the test loss and metric (logged per epoch)."""
        return self._shared_step(batch, "test")

    def configure_optimizers(self) -> Any:
        """Build the injected optimizer over all parameters, plus the scheduler if one is given.

        ``ReduceLROnPlateau`` monitors ``val/loss``.
        """
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": self.scheduler_interval}
        if isinstance(scheduler, ReduceLROnPlateau):
            config["monitor"] = PLATEAU_MONITOR
        return {"optimizer": optimizer, "lr_scheduler": config}
