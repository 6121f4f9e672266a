"""Base of the callbacks that change the model's structure in ``setup`` and log one mean value."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.nn.surgery import SurgerySummary


class SurgeryCallback(TrickCallback):
    """A trick applied by model surgery in ``setup``, with the mean of some tensors logged.

    ``setup`` runs before the optimizers are built and before a checkpoint is restored, so
    checkpoints restore into the changed model. Subclasses implement :meth:`apply` (idempotent:
    a second ``setup``, e.g. ``validate`` after ``fit``, changes nothing more) and
    :meth:`monitored`; the summary is printed on rank zero the first time something changed, and
    the mean of the monitored tensors is logged as ``metric_name`` at the Trainer's
    ``log_every_n_steps``.
    """

    metric_name: ClassVar[str]
    summary: SurgerySummary | None = None
    _monitored: list[Tensor]

    def apply(self, model: nn.Module) -> SurgerySummary:
        """Change ``model`` in place; return the surgery's summary."""
        raise NotImplementedError

    def monitored(self, model: nn.Module) -> list[Tensor]:
        """The tensors of the changed ``model`` whose mean is logged."""
        raise NotImplementedError

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        summary = self.apply(pl_module)
        if self.summary is None or summary.num_changed:
            self.summary = summary
            rank_zero_info(str(summary))
        self._monitored = self.monitored(pl_module)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        tensors = getattr(self, "_monitored", [])
        if not tensors or not self.logging_now(trainer):
            return
        with torch.no_grad():
            mean = torch.cat([t.detach().flatten().float() for t in tensors]).mean()
        self.log_metrics(trainer, pl_module, {self.metric_name: mean})
