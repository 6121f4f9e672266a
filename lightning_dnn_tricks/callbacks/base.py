"""The base class of every trick callback: capability checks against the Trainer at ``setup``."""

from __future__ import annotations

from typing import Any, ClassVar

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    SingleDeviceStrategy,
    Strategy,
)

from lightning_dnn_tricks.registry import TrickSpec
from lightning_dnn_tricks.validation import TrickConfigurationError


def strategy_name(strategy: Strategy) -> str:
    """The capability name of a Lightning strategy (``single_device``, ``ddp`` or its class)."""
    if isinstance(strategy, SingleDeviceStrategy):
        return "single_device"
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy):
        return "ddp"
    return type(strategy).__name__


class TrickCallback(Callback):
    """A Lightning callback that checks its declared capabilities before training.

    Subclasses set ``spec`` (their registry entry) and keep all maths in ``functional``/``nn``.
    ``setup`` raises :class:`~lightning_dnn_tricks.TrickConfigurationError` naming the conflict and
    the fix when the Trainer asks for something the trick does not support; ``on_fit_start`` does
    the same for the optimizers, which exist only then.
    """

    spec: ClassVar[TrickSpec]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(trainer, pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_optimizers(trainer)

    def _refuse(self, conflict: str, fix: str) -> None:
        raise TrickConfigurationError(f"{type(self).__name__}: {conflict} {fix}")

    def check_trainer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise when the Trainer's precision, strategy or loop settings are unsupported."""
        caps = self.spec.capabilities
        precision = str(trainer.precision)
        if precision not in caps.precisions:
            self._refuse(
                f"precision={precision!r} is not supported.",
                f"Use one of {', '.join(repr(p) for p in caps.precisions)}.",
            )
        strategy = strategy_name(trainer.strategy)
        if strategy not in caps.strategies:
            self._refuse(
                f"the {strategy!r} strategy is not supported.",
                f"Use one of {', '.join(repr(s) for s in caps.strategies)}.",
            )
        if trainer.accumulate_grad_batches > 1 and not caps.gradient_accumulation:
            self._refuse(
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} is not supported.",
                "Set accumulate_grad_batches=1 and raise the batch size instead.",
            )
        if not pl_module.automatic_optimization and not caps.manual_optimization:
            self._refuse(
                "manual optimisation (automatic_optimization=False) is not supported.",
                "Use automatic optimisation.",
            )

    def check_optimizers(self, trainer: pl.Trainer) -> None:
        """Raise when the module configured more optimizers than the trick supports."""
        limit = self.spec.capabilities.max_optimizers
        count = len(trainer.optimizers)
        if limit is not None and count > limit:
            self._refuse(
                f"{count} optimizers are configured but at most {limit} is supported.",
                "Return a single optimizer from configure_optimizers.",
            )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None
