"""The WeightAlign callback inside a real Trainer: timing of the surgery, checkpoints, reporting."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from torch import nn

from lightning_dnn_tricks import TrickWarning
from lightning_dnn_tricks.callbacks import WeightAlign
from lightning_dnn_tricks.nn import WeightAlignParametrization, is_weight_aligned


def _gain(model: nn.Module) -> torch.Tensor:
    return next(m for m in model.modules() if isinstance(m, WeightAlignParametrization)).gain


def test_aligns_before_the_optimizer_is_built_and_trains_the_gain() -> None:
    pl.seed_everything(0)
    model = TinyConvNet()
    raw = model.features[0].weight.detach().clone()
    callback = WeightAlign()
    trainer = pl.Trainer(max_steps=2, callbacks=[callback], **QUIET_TRAINER)
    trainer.fit(model, tiny_loader())
    assert is_weight_aligned(model.features[0]) and not is_weight_aligned(model.head)
    gain = _gain(model)
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert id(gain) in optimizer_params
    assert not torch.equal(gain.detach(), torch.full_like(gain, 2**0.5))
    assert not torch.equal(model.features[0].parametrizations.weight.original.detach(), raw)
    assert "weight_align/mean_gain" in trainer.callback_metrics
    assert callback.summary is not None and callback.summary.changed == {"Conv2d": 1}


class ValidatingTinyConvNet(TinyConvNet):
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))


def test_checkpoint_restores_into_the_aligned_model_and_summary_prints_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pl.seed_everything(0)
    model = ValidatingTinyConvNet()
    callback = WeightAlign()
    trainer = pl.Trainer(max_steps=3, callbacks=[callback], **QUIET_TRAINER)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, tiny_loader())
        trainer.validate(model, tiny_loader(), verbose=False)  # second setup: nothing new
    assert sum("WeightAlign: changed" in r.getMessage() for r in caplog.records) == 1
    trainer.save_checkpoint(tmp_path / "wa.ckpt")

    fresh = ValidatingTinyConvNet()
    tester = pl.Trainer(callbacks=[WeightAlign()], **QUIET_TRAINER)
    tester.validate(fresh, tiny_loader(), ckpt_path=tmp_path / "wa.ckpt", verbose=False)
    torch.testing.assert_close(_gain(fresh), _gain(model), rtol=0, atol=0)
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_warns_when_no_layer_matches() -> None:
    model = TinyConvNet()
    trainer = pl.Trainer(max_steps=1, callbacks=[WeightAlign(include="^nothing$")], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match="WeightAlign matched no layer"):
        trainer.fit(model, tiny_loader())


class ManualTinyConvNet(TinyConvNet):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        optimizer = self.optimizers()
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]
        return loss


def test_manual_optimisation_trains_the_aligned_model() -> None:
    pl.seed_everything(0)
    model = ManualTinyConvNet()
    trainer = pl.Trainer(max_steps=2, callbacks=[WeightAlign()], **QUIET_TRAINER)
    trainer.fit(model, tiny_loader())
    assert not torch.equal(_gain(model).detach(), torch.full((4,), 2**0.5))


def test_fan_in_one_layer_is_skipped_with_the_reason_in_the_summary() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1, groups=3), nn.Conv2d(3, 4, 3))
    before = model[0].weight.detach().clone()
    summary = WeightAlign().apply(model)
    assert summary.changed_names == ["1"] and [s.name for s in summary.skipped] == ["0"]
    assert "fan-in 1" in summary.skipped[0].reason and "fan-in 1" in str(summary)
    assert not is_weight_aligned(model[0]) and torch.equal(model[0].weight, before)


def test_flags_must_be_bools() -> None:
    with pytest.raises(TypeError, match="`exclude_classifier`"):
        WeightAlign(exclude_classifier="false")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`include_linear`"):
        WeightAlign(include_linear=1)  # type: ignore[arg-type]
