"""Tricks in company: the defects of issue 12 that need a closer look than the pair suite's.

Each test measures one quantity exactly (the gradient Norm Loss adds, the momentum at pruned
entries, the gain of a frozen conv...) against an independent reference; the pair suite
(``tests/conformance/test_composition.py``) checks every pair's effects more broadly.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from torch import nn

from lightning_dnn_tricks.callbacks import (
    IterativeMagnitudePruning,
    NormGroup,
    NormLoss,
    OptimizerSupport,
    WeightAlign,
    WeightNormSupervision,
)
from lightning_dnn_tricks.functional import add_norm_loss_grad_
from lightning_dnn_tricks.optim import FrankWolfe


def _fit(model: pl.LightningModule, callbacks: list[Any], **trainer: Any) -> pl.Trainer:
    pl.seed_everything(0)
    run = pl.Trainer(callbacks=callbacks, **{"max_epochs": 1, **QUIET_TRAINER, **trainer})
    run.fit(model, tiny_loader())
    return run


class _GradAtStep(pl.Callback):
    """Records the head weight's gradient when ``optimizer_index`` steps (after the tricks)."""

    def __init__(self, optimizer_index: int = 0) -> None:
        self.optimizer_index = optimizer_index
        self.grads: list[torch.Tensor] = []

    def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
        if optimizer is trainer.optimizers[self.optimizer_index]:
            self.grads.append(module.head.weight.grad.clone())


def _norm_loss_gradient_added(model: pl.LightningModule, optimizer_index: int = 0) -> float:
    """The Norm Loss gradient reaching the head, over the functional one (lr 0: same weights)."""
    with_trick, without = _GradAtStep(optimizer_index), _GradAtStep(optimizer_index)
    _fit(model, [NormLoss(strength=1.0, include="head"), with_trick], limit_train_batches=1)
    _fit(model, [without], limit_train_batches=1)
    once = model.head.weight.detach().clone()
    once.grad = torch.zeros_like(once)
    add_norm_loss_grad_([once], strength=1.0)
    added = with_trick.grads[0] - without.grads[0]
    return float(added.norm() / once.grad.norm())


class TwoOptimizers(TinyConvNet):
    """Manual optimisation: one backward, then each of two optimizers (lr 0) steps."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        first, second = self.optimizers()  # type: ignore[misc]
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(nn.functional.cross_entropy(self(x), y))
        first.step()
        second.step()

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD(self.features.parameters(), lr=0.0),
            torch.optim.SGD(self.head.parameters(), lr=0.0),
        ]


def test_norm_loss_reaches_the_second_optimizer_once() -> None:
    assert abs(_norm_loss_gradient_added(TwoOptimizers(), optimizer_index=1) - 1.0) < 1e-6


class TiedHead(TinyConvNet):
    """The head's weight is tied to a second linear layer's (lr 0)."""

    def __init__(self) -> None:
        super().__init__(lr=0.0)
        self.head_copy = nn.Linear(4 * 6 * 6, 3)
        self.head_copy.weight = self.head.weight


def test_a_tied_weight_is_regularised_once() -> None:
    assert abs(_norm_loss_gradient_added(TiedHead()) - 1.0) < 1e-6


def test_norm_loss_acts_on_the_raw_weight_behind_weight_align() -> None:
    norm_loss = NormLoss(strength=0.1)
    model = TinyConvNet()
    _fit(model, [WeightAlign(), norm_loss], limit_train_batches=1)
    conv = model.features[0]
    assert [w is conv.parametrizations.weight.original for w in norm_loss._weights] == [
        True,
        False,
    ]


def test_a_frozen_conv_stays_frozen_under_weight_align() -> None:
    model = TinyConvNet()
    model.features[0].requires_grad_(False)
    _fit(model, [WeightAlign()], limit_train_batches=1)
    conv = model.features[0]
    assert not any(p.requires_grad for p in conv.parameters())
    assert any("gain" in name for name, _ in conv.named_parameters())


def test_a_dense_penalty_after_pruning_puts_no_momentum_back_at_pruned_entries() -> None:
    model = TinyConvNet(momentum=0.9)
    pruning = IterativeMagnitudePruning(
        amount=0.5, rounds=1, epochs_per_round=1, exclude="features", monitor=None, verbose=False
    )
    penalty = NormGroup("head", bound=0.05, mode="penalty", strength=1.0, include="head")
    trainer = _fit(model, [pruning, WeightNormSupervision(groups=[penalty])], max_epochs=2)
    pruned = ~pruning.masks["head.weight"]
    assert pruned.float().mean() == 0.5
    momentum = trainer.optimizers[0].state[model.head.weight]["momentum_buffer"]
    assert torch.count_nonzero(momentum[pruned]) == 0
    assert torch.count_nonzero(model.head.weight.detach()[pruned]) == 0


class FrankWolfeNet(TinyConvNet):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return FrankWolfe(self.parameters(), lr=1e-2, inner_steps=2)


def test_a_rewind_masks_and_clears_frank_wolfes_base_optimizer_state() -> None:
    model = FrankWolfeNet()
    pruning = IterativeMagnitudePruning(
        amount=0.5, rounds=2, epochs_per_round=1, monitor=None, verbose=False
    )
    trainer = _fit(model, [OptimizerSupport(), pruning], max_epochs=3)
    base = trainer.optimizers[0].base
    for name, mask in pruning.masks.items():
        state = base.state[dict(model.named_parameters())[name]]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.count_nonzero(state[key][~mask]) == 0, (name, key)
