"""The capability checks every trick callback inherits, exercised with restrictive declarations."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from lightning_dnn_tricks import TrickConfigurationError
from lightning_dnn_tricks.callbacks.base import TrickCallback, strategy_name
from lightning_dnn_tricks.registry import Capabilities, TrickSpec

RESTRICTED = Capabilities(
    precisions=("32-true",),
    strategies=("single_device",),
    gradient_accumulation=False,
    manual_optimization=False,
    max_optimizers=1,
)


class Restricted(TrickCallback):
    spec = TrickSpec(
        name="restricted",
        kind="callback",
        import_path="tests:Restricted",
        summary="test double",
        paper="none",
        capabilities=RESTRICTED,
    )


class ManualTwoOptimizers(TinyConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def configure_optimizers(self) -> Any:  # type: ignore[override]
        return [
            torch.optim.SGD(self.features.parameters()),
            torch.optim.SGD(self.head.parameters()),
        ]


def _fit(callback: pl.Callback, model: pl.LightningModule | None = None, **kwargs: Any) -> None:
    trainer = pl.Trainer(max_steps=1, callbacks=[callback], **{**QUIET_TRAINER, **kwargs})
    trainer.fit(model or TinyConvNet(), tiny_loader())


def test_supported_settings_train() -> None:
    _fit(Restricted())


def test_unsupported_precision_is_refused_at_setup() -> None:
    with pytest.raises(
        TrickConfigurationError, match=r"Restricted: precision='bf16-mixed'.*'32-true'"
    ):
        _fit(Restricted(), precision="bf16-mixed")


def test_gradient_accumulation_is_refused_with_the_fix() -> None:
    with pytest.raises(TrickConfigurationError, match=r"accumulate_grad_batches=2.*batch size"):
        _fit(Restricted(), accumulate_grad_batches=2)


def test_manual_optimisation_is_refused() -> None:
    model = ManualTwoOptimizers()
    with pytest.raises(TrickConfigurationError, match="manual optimisation"):
        _fit(Restricted(), model)


def test_too_many_optimizers_are_refused_at_fit_start() -> None:
    class ManualAllowed(Restricted):
        spec = TrickSpec(
            name="manual_allowed",
            kind="callback",
            import_path="tests:ManualAllowed",
            summary="test double",
            paper="none",
            capabilities=Capabilities(manual_optimization=True, max_optimizers=1),
        )

    with pytest.raises(TrickConfigurationError, match="2 optimizers"):
        _fit(ManualAllowed(), ManualTwoOptimizers())


def test_unsupported_strategy_is_refused() -> None:
    trainer = SimpleNamespace(
        precision="32-true", strategy=DDPStrategy(), accumulate_grad_batches=1
    )
    with pytest.raises(TrickConfigurationError, match="'ddp' strategy"):
        Restricted().check_trainer(trainer, TinyConvNet())  # type: ignore[arg-type]


def test_strategy_names() -> None:
    from lightning.pytorch.strategies import DeepSpeedStrategy, FSDPStrategy

    assert strategy_name(SingleDeviceStrategy(torch.device("cpu"))) == "single_device"
    assert strategy_name(DDPStrategy()) == "ddp"
    assert strategy_name(FSDPStrategy()) == "FSDPStrategy"
    assert DeepSpeedStrategy.__mro__  # a DDPStrategy subclass that must not count as "ddp"
    assert strategy_name(object.__new__(DeepSpeedStrategy)) == "DeepSpeedStrategy"
