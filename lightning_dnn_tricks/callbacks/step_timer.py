"""A utility callback that times every training step (used by the demo and the benchmarks)."""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from lightning_dnn_tricks.validation import check_number


class StepTimer(Callback):
    """Wall-clock time of each training batch, from ``on_train_batch_start`` to its end.

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
            self.durations.append(time.perf_counter() - self._started)
            self._started = None

    def median_seconds(self) -> float:
        """Median step time after the warm-up steps (all steps when there are too few)."""
        timed = self.durations[self.warmup_steps :] or self.durations
        return statistics.median(timed) if timed else float("nan")
