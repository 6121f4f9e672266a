"""The BNSR callback inside a real Trainer: surgery at setup, checkpoints, refusals, reporting."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from lightning.pytorch.plugins import TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from lightning_dnn_tricks import TrickConfigurationError, TrickWarning
from lightning_dnn_tricks.callbacks import BNSR
from lightning_dnn_tricks.nn import BNSR2d


class ValidatingTinyConvNet(TinyConvNet):
    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val/loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))


def test_replaces_batch_norm_before_the_optimizer_and_logs_the_exponent() -> None:
    pl.seed_everything(0)
    model = TinyConvNet()
    weight = model.features[1].weight
    callback = BNSR()
    trainer = pl.Trainer(max_steps=3, callbacks=[callback], **QUIET_TRAINER)
    trainer.fit(model, tiny_loader())
    layer = model.features[1]
    assert type(layer) is BNSR2d and layer.weight is weight
    optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert optimizer_params == {id(p) for p in model.parameters()}
    assert not torch.equal(layer.running_lam, torch.ones(4))
    logged = trainer.callback_metrics["bnsr/mean_exponent"]
    torch.testing.assert_close(logged, layer.running_lam.mean())
    assert callback.summary is not None and callback.summary.changed == {"BatchNorm2d": 1}


def test_checkpoint_restores_into_the_changed_model_and_summary_prints_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pl.seed_everything(0)
    model = ValidatingTinyConvNet()
    trainer = pl.Trainer(max_steps=3, callbacks=[BNSR(alpha=0.7)], **QUIET_TRAINER)
    with caplog.at_level(logging.INFO):
        trainer.fit(model, tiny_loader())
        trainer.validate(model, tiny_loader(), verbose=False)  # second setup: nothing new
    assert sum("bnsr: changed 1 layer" in r.getMessage() for r in caplog.records) == 1
    trainer.save_checkpoint(tmp_path / "bnsr.ckpt")

    fresh = ValidatingTinyConvNet()
    tester = pl.Trainer(callbacks=[BNSR(alpha=0.7)], **QUIET_TRAINER)
    tester.validate(fresh, tiny_loader(), ckpt_path=tmp_path / "bnsr.ckpt", verbose=False)
    assert torch.equal(fresh.features[1].running_lam, model.features[1].running_lam)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fresh.eval()(x), model.eval()(x))


def test_warns_when_no_layer_matches() -> None:
    trainer = pl.Trainer(max_steps=1, callbacks=[BNSR(include="^nothing$")], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match="BNSR matched no layer"):
        trainer.fit(TinyConvNet(), tiny_loader())


def test_refuses_sync_batchnorm() -> None:
    strategy = DDPStrategy()
    strategy._layer_sync = TorchSyncBatchNorm()
    trainer = SimpleNamespace(precision="32-true", strategy=strategy, accumulate_grad_batches=1)
    with pytest.raises(TrickConfigurationError, match="sync_batchnorm"):
        BNSR().check_trainer(trainer, pl.LightningModule())  # type: ignore[arg-type]
    strategy._layer_sync = None
    BNSR().check_trainer(trainer, pl.LightningModule())  # type: ignore[arg-type]


def test_identity_warp_trains_exactly_like_batch_norm() -> None:
    def train(callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
        pl.seed_everything(0)
        model = TinyConvNet()
        trainer = pl.Trainer(max_steps=3, callbacks=callbacks, **QUIET_TRAINER)
        trainer.fit(model, tiny_loader())
        return model.state_dict()

    plain = train([])
    with_bnsr = train([BNSR(warp="identity")])
    for key, value in plain.items():
        assert torch.equal(value, with_bnsr[key]), key


def test_compiled_option_reaches_every_layer_and_is_validated() -> None:
    model = TinyConvNet()
    BNSR(compiled=True).apply(model)
    layers = [m for m in model.modules() if isinstance(m, BNSR2d)]
    assert layers and all(layer.compiled for layer in layers)
    with pytest.raises(ValueError, match="`compiled`"):
        BNSR(compiled="yes")  # type: ignore[arg-type]
