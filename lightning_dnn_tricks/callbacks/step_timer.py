"""A utility callback that times every training step (used by the demo and the benchmarks)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_dnn_tricks.validation import check_number


def _synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on ``device`` (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer(Callback):
    """Wall-clock time of each training batch, from ``on_train_batch_start`` to its end.

    On a CUDA device, kernels run asynchronously: the clock would stop when the step's kernels
    are queued, not when they have run. So both timing points first synchronise the module's
    device (``torch.cuda.synchronize(pl_module.device)``): the start waits for earlier work,
    the end for the step's own. On the CPU nothing is synchronised (there is nothing to wait
    for); other accelerators (MPS, XLA) are timed as they are, without a synchronisation.

    Args:
        warmup_steps: the first steps to leave out of :meth:`median_seconds` (allocator and
            kernel warm-up).

    Examples:
        >>> timer = StepTimer(warmup_steps=2)
        >>> timer.durations = [9.0, 9.0, 0.1, 0.3, 0.2]
        >>> timer.median_seconds()
        0.2
    """

    def __init__(self, warmup_steps: int = 3) -> None:
        check_number("warmup_steps", warmup_steps, low=0, integer=True)
        self.warmup_steps = warmup_steps
        self.durations: list[float] = []
        self._started: float | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        _synchronize(pl_module.device)
        self._started = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._started is not None:
            _synchronize(pl_module.device)
            self.durations.append(time.perf_counter() - self._started)
            self._started = None

    def median_seconds(self) -> float:
        """Median step time after the warm-up steps (all steps when there are too few)."""
        timed = self.durations[self.warmup_steps :] or self.durations
        return statistics.median(timed) if timed else float("nan")
