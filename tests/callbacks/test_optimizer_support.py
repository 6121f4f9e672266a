"""The Lightning path of the optimizers: OptimizerSupport (probe isolation, anchors, checks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn_tricks import TrickConfigurationError, TrickWarning
from lightning_dnn_tricks.callbacks import IterativeMagnitudePruning, OptimizerSupport
from lightning_dnn_tricks.optim import SGDG2, SRK2, FrankWolfe


class MaskRecorder(nn.Module):
    """Dropout that records its masks."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = (torch.rand_like(x) > 0.5).float()
        if self.training:
            self.masks.append(mask)
        return x * mask * 2


class Module(pl.LightningModule):
    def __init__(self, optimizer: Any) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, 8), nn.BatchNorm1d(8), MaskRecorder(), nn.Linear(8, 1)
        )
        self.make_optimizer = optimizer
        self.logged: list[str] = []  # a list: an int attribute changed by training_step warns
        self.val_weights: list[torch.Tensor] = []

    @property
    def logged_losses(self) -> int:
        return self.logged.count("train/loss")

    def log(self, name: str, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        self.logged.append(name)
        super().log(name, *args, **kwargs)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.val_weights.append(self.net[0].weight.detach().clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


def _loader(n: int = 40) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 4, generator=generator), torch.randn(n, 1, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=8)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_sgdg2_probe_replays_dropout_and_leaves_batchnorm_and_logs_once(precision: str) -> None:
    pl.seed_everything(0)
    module = Module(lambda p: SGDG2(p, lr=0.01))
    trainer = pl.Trainer(
        max_steps=4, precision=precision, callbacks=[OptimizerSupport()], **QUIET_TRAINER
    )
    trainer.fit(module, _loader())
    masks = module.net[2].masks
    assert len(masks) == 8  # two evaluations per step
    assert all(torch.equal(masks[i], masks[i + 1]) for i in range(0, 8, 2))
    assert not torch.equal(masks[0], masks[2])
    assert int(module.net[1].num_batches_tracked) == 4
    assert module.logged_losses == 4
    assert trainer.callback_metrics["sgdg2/lr"] == pytest.approx(
        trainer.optimizers[0].param_groups[0]["lr"]
    )


def test_closure_optimizer_refuses_gradient_accumulation() -> None:
    module = Module(lambda p: SGDG2(p, lr=0.01))
    trainer = pl.Trainer(
        max_steps=2, accumulate_grad_batches=2, callbacks=[OptimizerSupport()], **QUIET_TRAINER
    )
    with pytest.raises(TrickConfigurationError, match=r"accumulate_grad_batches=2.*batch size"):
        trainer.fit(module, _loader())


def test_frank_wolfe_validation_checkpoints_and_end_see_the_anchor(tmp_path: Path) -> None:
    pl.seed_everything(0)
    module = Module(lambda p: FrankWolfe(p, lr=1e-2, inner_steps=4))
    checkpoint = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=6,
        val_check_interval=3,
        limit_val_batches=1,
        num_sanity_val_steps=0,
        callbacks=[OptimizerSupport(), checkpoint],
        **{**QUIET_TRAINER, "enable_checkpointing": True},
    )
    trainer.fit(module, _loader(), _loader(8))
    opt = trainer.optimizers[0]
    weight = module.net[0].weight
    # End of training (step 6, t=2 of 4): the model holds the anchor, the trajectory is kept.
    assert opt.swapped and torch.equal(weight, opt.state[weight]["anchor"])
    assert not torch.equal(opt.state[weight]["position"], weight)
    # Validation after step 3 (t=3) saw the anchor of the first trajectory: the initial weights.
    saved = torch.load(tmp_path / "epoch=0-step=3.ckpt", weights_only=False)
    assert torch.equal(module.val_weights[0], saved["state_dict"]["net.0.weight"])
    pl.seed_everything(0)
    initial = Module(None).net[0].weight
    assert torch.equal(module.val_weights[0], initial)
    assert "position" in saved["optimizer_states"][0]["state"][0]


def test_only_the_first_instance_acts() -> None:
    module = Module(lambda p: SGDG2(p, lr=0.01))
    first, second = OptimizerSupport(), OptimizerSupport()
    trainer = pl.Trainer(max_steps=1, callbacks=[first, second], **QUIET_TRAINER)
    trainer.fit(module, _loader())
    assert int(module.net[1].num_batches_tracked) == 1 and module.logged_losses == 1


OPTIMIZERS = {
    "SGDG2": lambda p: SGDG2(p, lr=0.01),
    "SRK2": lambda p: SRK2(p, lr=0.01),
    "FrankWolfe": lambda p: FrankWolfe(p, lr=1e-2, inner_steps=2),
}


class ManualModule(Module):
    """Manual optimisation through Lightning's optimizer wrapper (``self.optimizers()``)."""

    def __init__(self, optimizer: Any) -> None:
        super().__init__(optimizer)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(self.net(batch[0]), batch[1])
            self.manual_backward(loss)
            return loss

        optimizer.step(closure=closure)


@pytest.mark.parametrize("manual", [False, True], ids=["automatic", "manual"])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_a_trainer_without_optimizer_support_fails_on_the_first_step(
    name: str, manual: bool
) -> None:
    """Manual optimisation too (with the callback, it then refuses manual optimisation)."""
    module = (ManualModule if manual else Module)(OPTIMIZERS[name])
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(max_steps=3, **QUIET_TRAINER)
    with pytest.raises(TrickConfigurationError) as raised:
        trainer.fit(module, _loader())
    message = str(raised.value)
    assert message.startswith(f"{name} is stepped by a Lightning Trainer that has no ")
    assert "Trainer(callbacks=[OptimizerSupport()])" in message
    assert "from lightning_dnn_tricks.callbacks import OptimizerSupport" in message
    assert "\n" not in message  # one paragraph
    assert trainer.global_step == 0 and module.net[2].masks == []  # before the first evaluation
    assert all(torch.equal(p, q) for p, q in zip(before, module.parameters(), strict=True))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_with_optimizer_support_they_train(name: str) -> None:
    module = Module(OPTIMIZERS[name])
    trainer = pl.Trainer(max_steps=3, callbacks=[OptimizerSupport()], **QUIET_TRAINER)
    trainer.fit(module, _loader())
    assert trainer.global_step == 3
    optimizer = trainer.optimizers[0]
    assert "_lightning_support" not in vars(optimizer)  # the mark ends with the fit
    with pytest.raises(TrickConfigurationError, match="no OptimizerSupport"):  # a new Trainer
        pl.Trainer(max_steps=1, **QUIET_TRAINER).fit(Module(lambda p: optimizer), _loader())


def test_a_plain_loop_needs_no_callback_with_lightning_imported() -> None:
    model = nn.Linear(4, 1)
    x, y = torch.randn(8, 4), torch.randn(8, 1)
    for name, make in OPTIMIZERS.items():
        optimizer = make(model.parameters())

        def closure(optimizer: torch.optim.Optimizer = optimizer) -> torch.Tensor:
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        for _ in range(2):
            optimizer.step(closure)
        assert all(torch.isfinite(p).all() for p in model.parameters()), name


def test_steps_the_tuner_takes_before_fit_start_find_the_callback() -> None:
    """Lightning runs tuner callbacks first: their steps precede OptimizerSupport.on_fit_start."""
    from lightning.pytorch.tuner import Tuner

    module = Module(lambda p: FrankWolfe(p, lr=1e-2, inner_steps=2))
    module.lr = 1e-2
    trainer = pl.Trainer(max_steps=3, callbacks=[OptimizerSupport()], **QUIET_TRAINER)
    Tuner(trainer).lr_find(module, _loader(), num_training=3, update_attr=False)
    trainer.fit(module, _loader())
    assert trainer.global_step == 3


class StateDictProbe(pl.Callback):
    """Records, after each training batch, the module's state_dict weight and the live weight."""

    def __init__(self) -> None:
        self.saved: list[torch.Tensor] = []
        self.live: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.saved.append(pl_module.state_dict()["net.0.weight"].clone())
        self.live.append(pl_module.net[0].weight.detach().clone())


def test_frank_wolfe_state_dict_holds_the_anchor_mid_trajectory() -> None:
    """What weights_only checkpoints and a user's state_dict() see between steps: the anchor."""
    pl.seed_everything(0)
    module = Module(lambda p: FrankWolfe(p, lr=1e-2, inner_steps=2))
    initial = module.net[0].weight.detach().clone()
    probe = StateDictProbe()
    trainer = pl.Trainer(max_steps=3, callbacks=[OptimizerSupport(), probe], **QUIET_TRAINER)
    trainer.fit(module, _loader())
    assert torch.equal(probe.saved[0], initial) and not torch.equal(probe.live[0], initial)
    assert torch.equal(probe.saved[1], probe.live[1])  # step 2 restarted: weights are the anchor
    assert torch.equal(probe.saved[2], probe.live[1]) and not torch.equal(
        probe.live[2], probe.live[1]
    )


class OneCycleModule(Module):
    def configure_optimizers(self) -> Any:
        optimizer = SGDG2(self.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=0.1, total_steps=10, cycle_momentum=False
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def test_a_scheduler_overwriting_the_adapted_step_size_is_named() -> None:
    trainer = pl.Trainer(max_steps=3, callbacks=[OptimizerSupport()], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match=r"SGDG2.*OneCycleLR.*h_min.*SRK2") as record:
        trainer.fit(OneCycleModule(None), _loader())
    assert sum(issubclass(w.category, TrickWarning) for w in record) == 1


class CarriedState(pl.LightningModule):
    """An RNN whose hidden state is carried from batch to batch on the module."""

    def __init__(self, carry: bool) -> None:
        super().__init__()
        self.rnn, self.head = nn.RNN(4, 6, batch_first=True), nn.Linear(6, 1)
        self.carry = carry
        self.hidden: torch.Tensor | None = None

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0].unsqueeze(1)
        out, hidden = self.rnn(x, self.hidden)
        if self.carry:
            self.hidden = hidden.detach()
        return nn.functional.mse_loss(self.head(out[:, -1]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return SGDG2(self.parameters(), lr=0.01)


def test_state_carried_between_the_two_evaluations_warns_once() -> None:
    trainer = pl.Trainer(max_steps=3, callbacks=[OptimizerSupport()], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match=r"SGDG2.*hidden.*probe") as record:
        trainer.fit(CarriedState(carry=True), _loader())
    assert sum(issubclass(w.category, TrickWarning) for w in record) == 1


def test_a_module_that_carries_nothing_does_not_warn() -> None:
    trainer = pl.Trainer(max_steps=3, callbacks=[OptimizerSupport()], **QUIET_TRAINER)
    trainer.fit(CarriedState(carry=False), _loader())  # a TrickWarning would be an error here


def test_a_callback_pinning_the_lr_during_the_closure_is_detected() -> None:
    """IMP with rewind="finetune" sets the lr in on_before_optimizer_step (inside the closure)."""
    pruning = IterativeMagnitudePruning(
        amount=0.5, rounds=2, epochs_per_round=1, rewind="finetune", monitor=None, verbose=False
    )
    trainer = pl.Trainer(max_epochs=3, callbacks=[OptimizerSupport(), pruning], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match=r"SGDG2.*lr.*outside.*an LR scheduler\?"):
        trainer.fit(Module(lambda p: SGDG2(p, lr=0.01)), _loader())
