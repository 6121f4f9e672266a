"""The company report of issue 12: each defect of tricks in company, measured on any checkout.

Every check runs a tiny model (conv + BatchNorm backbone, linear head, SGD with momentum) for a
few epochs and prints what a user would see: the sparsity EMA leaves behind, what EMA averaged
under FrankWolfe, what pruning and Norm Loss reach behind WeightAlign, the momentum at pruned
entries, Norm Loss under two optimizers and on a tied weight, two Norm Loss instances, metrics in
a CSVLogger at the Trainer's defaults, and what importance sampling says to an unchanged module
and does to a user's sampler. Only constructor arguments that every version has are used.

    python benchmarks/company_report.py                       # this checkout (~30 s)
    PYTHONPATH=/tmp/old python benchmarks/company_report.py   # a git worktree of an older commit
"""

from __future__ import annotations

import csv
import logging
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from lightning_dnn_tricks.callbacks import (
    AdaptiveImportanceSampling,
    IterativeMagnitudePruning,
    NormGroup,
    NormLoss,
    OptimizerSupport,
    WeightAlign,
    WeightNormSupervision,
)
from lightning_dnn_tricks.optim import FrankWolfe

QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class Net(pl.LightningModule):
    """Conv + BatchNorm + ReLU, linear head, on 1x6x6 inputs; SGD with momentum by default."""

    def __init__(self, optimizer: Callable[[Any], torch.optim.Optimizer] | None = None) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 4 * 4, 4)
        self.make_optimizer = optimizer or (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


def loader(n: int = 16, sampler: Any = None) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 1, 6, 6, generator=generator), torch.randint(0, 4, (n,)))
    return DataLoader(data, batch_size=4, sampler=sampler)


def fit(model: pl.LightningModule, callbacks: list[Any], epochs: int = 3, **kw: Any) -> pl.Trainer:
    pl.seed_everything(0)
    data = kw.pop("data", None) or loader()
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, **{"logger": False, **QUIET, **kw})
    trainer.fit(model, data)
    return trainer


def zeros(t: torch.Tensor) -> float:
    return float((t == 0).float().mean())


def report(name: str, check: Callable[[], str]) -> None:
    try:
        outcome = check()
    except Exception as error:
        outcome = f"raises {type(error).__name__}: {str(error).splitlines()[0][:150]}"
    print(f"- {name}: {outcome}")


def imp(**kw: Any) -> IterativeMagnitudePruning:
    return IterativeMagnitudePruning(amount=0.5, rounds=2, epochs_per_round=1, verbose=False, **kw)


def pruning_with_ema() -> str:
    model, pruning = Net(), imp(monitor=None)
    fit(model, [pruning, EMAWeightAveraging(decay=0.5)])
    return f"model zeros {zeros(model.head.weight):.2f}, pruning reports {pruning._sparsity:.2f}"


def frank_wolfe_with_ema() -> str:
    model = Net(lambda p: FrankWolfe(p, lr=1e-2, inner_steps=2))
    ema = EMAWeightAveraging(decay=0.5)
    # Ends mid-trajectory (3 steps, K=2).
    fit(model, [OptimizerSupport(), ema], epochs=1, limit_train_batches=3)
    average = ema._average_model.module
    gap = max(
        float((p - q).abs().max())
        for p, q in zip(model.parameters(), average.parameters(), strict=True)
    )
    return f"max |final weights - EMA average| = {gap:.2e} (0: the model holds the average)"


def weight_align_with_pruning() -> str:
    model = Net()
    fit(model, [WeightAlign(), imp(monitor=None)])
    conv = model.conv
    raw = (
        conv.parametrizations.weight.original if hasattr(conv, "parametrizations") else conv.weight
    )
    head = zeros(model.head.weight)
    return f"zeros in the aligned conv's raw weight {zeros(raw):.2f} (head: {head:.2f})"


def weight_align_with_norm_loss() -> str:
    model, norm_loss = Net(), NormLoss(strength=0.1)
    fit(model, [WeightAlign(), norm_loss], epochs=1)
    shapes = [tuple(w.shape) for w in norm_loss._weights]
    return f"Norm Loss regularises {len(shapes)} tensors {shapes} (conv (4, 1, 3, 3), head (4, 64))"


def weight_align_frozen_conv() -> str:
    model = Net()
    model.conv.requires_grad_(False)
    fit(model, [WeightAlign()], epochs=1)
    gains = [p for n, p in model.conv.named_parameters() if "gain" in n]
    return f"frozen conv's gain trainable: {[bool(g.requires_grad) for g in gains]}"


def penalty_after_pruning() -> str:
    model, pruning = Net(), imp(monitor=None, exclude="conv")
    group = NormGroup("head", bound=0.05, mode="penalty", strength=1.0, include="head")
    trainer = fit(model, [pruning, WeightNormSupervision(groups=[group])])
    mask = model.head.weight == 0
    momentum = trainer.optimizers[0].state[model.head.weight]["momentum_buffer"]
    return f"max |momentum| at pruned entries {float(momentum[mask].abs().max()):.2e}"


def rewind_with_frank_wolfe_base_state() -> str:
    model, pruning = Net(lambda p: FrankWolfe(p, lr=1e-2, inner_steps=2)), imp(monitor=None)
    trainer = fit(model, [OptimizerSupport(), pruning])
    base = trainer.optimizers[0].base
    pruned = model.head.weight == 0
    moment = base.state[model.head.weight]["exp_avg"]
    return f"max |base Adam exp_avg| at pruned entries {float(moment[pruned].abs().max()):.2e}"


class TwoOptimizers(Net):
    """Manual optimisation: one backward, then each of two optimizers steps (lr 0)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        first, second = self.optimizers()
        first.zero_grad()
        second.zero_grad()
        self.manual_backward(nn.functional.cross_entropy(self(x), y))
        first.step()
        second.step()

    def configure_optimizers(self) -> Any:
        return [
            torch.optim.SGD([*self.conv.parameters(), *self.bn.parameters()], lr=0.0),
            torch.optim.SGD(self.head.parameters(), lr=0.0),
        ]


def norm_loss_gradient_ratio(model: pl.LightningModule, optimizer_index: int) -> float:
    """The Norm Loss gradient reaching the head at its optimizer's step, over the functional one
    (the model trains at lr 0, so both runs see the same weights)."""
    from lightning_dnn_tricks.functional import add_norm_loss_grad_

    grads: list[torch.Tensor] = []

    class Probe(pl.Callback):
        def on_before_optimizer_step(self, trainer: Any, module: Any, optimizer: Any) -> None:
            if optimizer is trainer.optimizers[optimizer_index]:
                grads.append(module.head.weight.grad.clone())

    for callbacks in ([NormLoss(strength=1.0, include="head")], []):
        fit(model, [*callbacks, Probe()], epochs=1, limit_train_batches=1)
    once = model.head.weight.detach().clone().requires_grad_()
    once.grad = torch.zeros_like(once)
    add_norm_loss_grad_([once], strength=1.0)
    return float((grads[0] - grads[1]).norm() / once.grad.norm())


def norm_loss_two_optimizers() -> str:
    ratio = norm_loss_gradient_ratio(TwoOptimizers(), optimizer_index=1)
    return f"Norm Loss gradient reaching the second optimizer = {ratio:.2f} x the functional one"


class TiedNet(Net):
    """The head's weight is tied to a second (unused) linear layer's."""

    def __init__(self) -> None:
        super().__init__(lambda p: torch.optim.SGD(p, lr=0.0))
        self.head_copy = nn.Linear(4 * 4 * 4, 4)
        self.head_copy.weight = self.head.weight


def norm_loss_tied_weight() -> str:
    ratio = norm_loss_gradient_ratio(TiedNet(), optimizer_index=0)
    return f"Norm Loss gradient on the tied weight = {ratio:.2f} x the functional one"


def norm_loss_two_instances() -> str:
    fit(Net(), [NormLoss(strength=0.1, include="conv"), NormLoss(strength=0.2, include="head")])
    return "trains"


def metrics_at_trainer_defaults() -> str:
    folder = Path(tempfile.mkdtemp())
    group = NormGroup("head", bound=0.5, include="head")
    callbacks = [NormLoss(strength=0.1), WeightNormSupervision(groups=[group])]
    fit(Net(), callbacks, epochs=40, logger=CSVLogger(folder), data=loader(n=16))
    with open(next(folder.rglob("metrics.csv"))) as file:
        rows = list(csv.DictReader(file))
    keys = sorted(
        {k for row in rows for k, v in row.items() if v and k.split("/")[0] in ("norm_loss", "wns")}
    )
    return f"160 steps at log_every_n_steps=50: trick metrics in the CSV: {keys or 'none'}"


class DictBatchNet(Net):
    """An unchanged module: ``x, y = batch`` (fails on an importance batch)."""


class ImportanceNet(Net):
    """A module that follows the importance-batch contract."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        from lightning_dnn_tricks.functional import importance_weighted_mean

        x, y = batch["example"]
        logits = self(x)
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        return importance_weighted_mean(losses, batch, logits=logits, targets=y)


def importance_on_unchanged_module() -> str:
    try:
        fit(DictBatchNet(), [AdaptiveImportanceSampling()], epochs=1)
    except Exception as error:
        text = str(error) + " ".join(getattr(error, "__notes__", []))
        said = "AdaptiveImportanceSampling" in text
        return f"{type(error).__name__}; names the library's contract: {said}"
    return "trains"


def importance_with_user_sampler() -> str:
    weights = torch.ones(16)
    weights[:8] = 100.0
    sampler = WeightedRandomSampler(
        weights, num_samples=16, generator=torch.Generator().manual_seed(0)
    )
    trainer = fit(
        ImportanceNet(), [AdaptiveImportanceSampling()], epochs=1, data=loader(sampler=sampler)
    )
    return f"trains; the training sampler is now {type(trainer.train_dataloader.sampler).__name__}"


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    for name, check in [
        ("IMP + EMA", pruning_with_ema),
        ("FrankWolfe + EMA", frank_wolfe_with_ema),
        ("WeightAlign + IMP", weight_align_with_pruning),
        ("WeightAlign + NormLoss", weight_align_with_norm_loss),
        ("WeightAlign on a frozen conv", weight_align_frozen_conv),
        ("WNS penalty after pruning", penalty_after_pruning),
        ("pruning rewind, FrankWolfe's base state", rewind_with_frank_wolfe_base_state),
        ("NormLoss, two optimizers (manual)", norm_loss_two_optimizers),
        ("NormLoss, a weight tied between two layers", norm_loss_tied_weight),
        ("two NormLoss instances", norm_loss_two_instances),
        ("metrics at Trainer defaults", metrics_at_trainer_defaults),
        ("importance sampling, unchanged module", importance_on_unchanged_module),
        ("importance sampling, user's WeightedRandomSampler", importance_with_user_sampler),
    ]:
        report(name, check)
