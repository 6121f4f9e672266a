"""The NormLoss callback inside a real Trainer."""

from __future__ import annotations

from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from torch import nn

from lightning_dnn_tricks import TrickWarning
from lightning_dnn_tricks.callbacks import NormLoss
from lightning_dnn_tricks.functional import norm_loss


class GradRecorder(pl.Callback):
    """Records the gradients the optimizer sees (place it after the callbacks under test)."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer
    ) -> None:  # type: ignore[no-untyped-def]
        self.grads.append(
            {
                n: p.grad.detach().clone()
                for n, p in pl_module.named_parameters()
                if p.grad is not None
            }
        )


def _fit_one_step(callbacks: list[pl.Callback], **trainer_kwargs: object) -> GradRecorder:
    recorder = GradRecorder()
    pl.seed_everything(0)
    model = TinyConvNet()
    trainer = pl.Trainer(
        max_steps=1, callbacks=[*callbacks, recorder], **QUIET_TRAINER, **trainer_kwargs
    )  # type: ignore[arg-type]
    trainer.fit(model, tiny_loader())
    return recorder


def test_adds_exactly_the_norm_loss_gradient_once_per_step() -> None:
    strength = 0.3
    plain = _fit_one_step([])
    regularised = _fit_one_step([NormLoss(strength=strength)])
    pl.seed_everything(0)
    model = TinyConvNet()
    weights = [model.features[0].weight, model.head.weight]
    (strength * norm_loss(weights)).backward()
    for name, param in [("features.0.weight", weights[0]), ("head.weight", weights[1])]:
        added = regularised.grads[0][name] - plain.grads[0][name]
        torch.testing.assert_close(added, param.grad, atol=1e-6, rtol=1e-5)
    # biases and BatchNorm parameters are untouched
    for name in ("features.0.bias", "features.1.weight", "head.bias"):
        torch.testing.assert_close(regularised.grads[0][name], plain.grads[0][name])


def test_once_per_optimizer_step_under_gradient_accumulation() -> None:
    strength = 0.3
    plain = _fit_one_step([], accumulate_grad_batches=2)
    regularised = _fit_one_step([NormLoss(strength=strength)], accumulate_grad_batches=2)
    pl.seed_everything(0)
    model = TinyConvNet()
    (strength * norm_loss([model.head.weight])).backward()
    added = regularised.grads[0]["head.weight"] - plain.grads[0]["head.weight"]
    torch.testing.assert_close(added, model.head.weight.grad, atol=1e-6, rtol=1e-5)


def test_include_exclude_and_classifier_selection() -> None:
    model = TinyConvNet()
    assert NormLoss().select_weights(model) == [model.features[0].weight, model.head.weight]
    assert NormLoss(exclude_classifier=True).select_weights(model) == [model.features[0].weight]
    assert NormLoss(include=r"^head").select_weights(model) == [model.head.weight]
    assert NormLoss(exclude=r"features").select_weights(model) == [model.head.weight]
    assert NormLoss(layer_types=[nn.Conv2d]).select_weights(model) == [model.features[0].weight]


def test_timm_layers_are_matched_by_isinstance() -> None:
    from timm.layers import Linear as TimmLinear
    from timm.layers import StdConv2d

    model = nn.Sequential(StdConv2d(3, 4, 3), nn.Flatten(), TimmLinear(4, 2))
    assert len(NormLoss().select_weights(model)) == 2


def test_timm_classifier_is_found_for_exclusion() -> None:
    import timm

    backbone = timm.create_model("resnet18", pretrained=False, num_classes=10)
    selected = NormLoss(exclude_classifier=True).select_weights(backbone)
    assert all(weight is not backbone.fc.weight for weight in selected)
    assert len(selected) == len(NormLoss().select_weights(backbone)) - 1


def test_empty_selection_warns() -> None:
    with pytest.warns(TrickWarning, match="matched no layer"):
        _fit_one_step([NormLoss(include="does-not-exist")])


def test_warns_when_weight_decay_acts_on_the_same_tensors() -> None:
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=1, callbacks=[NormLoss()], **QUIET_TRAINER)  # type: ignore[arg-type]
    with pytest.warns(TrickWarning, match="weight_decay=0.01"):
        trainer.fit(TinyConvNet(weight_decay=0.01), tiny_loader())


def test_logs_mean_abs_deviation() -> None:
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=2, callbacks=[NormLoss()], **QUIET_TRAINER)
    model = TinyConvNet()
    trainer.fit(model, tiny_loader())
    value = trainer.callback_metrics["norm_loss/mean_abs_deviation"]
    assert torch.isfinite(value) and value > 0


class AdamWNet(TinyConvNet):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=0.05, weight_decay=1e-4)


def _weights_after(model: pl.LightningModule, callbacks: list[pl.Callback], steps: int = 3) -> dict:
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=steps, callbacks=callbacks, **QUIET_TRAINER)
    trainer.fit(model, tiny_loader())
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _authors_factor(weight: torch.Tensor, lr: float, factor: float) -> torch.Tensor:
    """``1 - lr 2 factor (1 - 1/||w_i||)`` per row (Ranger21's port of the authors' code)."""
    norms = torch.linalg.vector_norm(weight.double().flatten(1), dim=1)
    return (1 - lr * 2 * factor * (1 - 1 / norms)).view(-1, *([1] * (weight.dim() - 1)))


def test_decoupled_mode_scales_the_weights_before_the_adamw_update() -> None:
    """One step of the author-derived form: ``w <- w m`` before AdamW's own decay and update,
    so ``w_after = w_plain + (m - 1)(1 - lr wd) w_0`` (the gradient is the same in both)."""
    lr, decay, factor = 0.05, 1e-4, 0.3
    pl.seed_everything(0)
    initial = {n: p.detach().clone() for n, p in AdamWNet().named_parameters()}
    pl.seed_everything(0)
    plain = _weights_after(AdamWNet(), [], steps=1)
    pl.seed_everything(0)
    decoupled = _weights_after(
        AdamWNet(), [NormLoss(strength=factor, reduction="sum", decoupled=True)], steps=1
    )
    for name in ("features.0.weight", "head.weight"):
        w0 = initial[name].double()
        m = _authors_factor(w0, lr, factor)
        expected = plain[name].double() + (m - 1) * (1 - lr * decay) * w0
        torch.testing.assert_close(decoupled[name].double(), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(decoupled["head.bias"], plain["head.bias"])


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_decoupled_and_gradient_forms_coincide_under_plain_sgd(reduction: str) -> None:
    pl.seed_everything(0)
    gradient = _weights_after(TinyConvNet(), [NormLoss(strength=0.3, reduction=reduction)])
    pl.seed_everything(0)
    decoupled_run = NormLoss(strength=0.3, reduction=reduction, decoupled=True)
    decoupled = _weights_after(TinyConvNet(), [decoupled_run])
    for name, value in gradient.items():  # equal up to float32 rounding
        torch.testing.assert_close(decoupled[name], value, atol=1e-6, rtol=1e-5)


def test_decoupled_mode_is_refused_with_a_two_evaluation_optimizer() -> None:
    from lightning_dnn_tricks import TrickConfigurationError
    from lightning_dnn_tricks.optim import SGDG2

    class Net(TinyConvNet):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return SGDG2(self.parameters(), lr=0.1)

    with pytest.raises(TrickConfigurationError, match="decoupled=True"):
        _weights_after(Net(), [NormLoss(decoupled=True)])


def test_decoupled_mode_is_refused_under_16_mixed_precision() -> None:
    from lightning_dnn_tricks import TrickConfigurationError

    # On CPU Lightning turns 16-mixed into bf16-mixed, so the check is called with its settings.
    trainer = SimpleNamespace(precision="16-mixed", optimizers=[])
    with pytest.raises(TrickConfigurationError, match="16-mixed"):
        NormLoss(decoupled=True).check_decoupled(trainer)  # type: ignore[arg-type]


def test_decoupled_mode_runs_alongside_weight_decay_without_a_warning() -> None:
    _weights_after(AdamWNet(), [NormLoss(strength=1e-4, reduction="sum", decoupled=True)])
    with pytest.warns(TrickWarning, match="weight_decay"):
        _weights_after(AdamWNet(), [NormLoss(strength=1e-4)])
