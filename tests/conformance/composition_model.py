"""The small model of the composition and telemetry suites: conv + BatchNorm backbone, linear
head, per-example losses (so importance sampling applies), a ``backbone`` for
``BackboneFinetuning``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.callbacks import (
    BNSR,
    AcceleratedIMP,
    AdaptiveImportanceSampling,
    IterativeMagnitudePruning,
    NormGroup,
    NormLoss,
    OptimizerSupport,
    WeightAlign,
    WeightNormSupervision,
)
from lightning_dnn_tricks.models.base import ExampleLosses, SupervisedModule
from lightning_dnn_tricks.optim import SGDG2, FrankWolfe


class CompositionModel(SupervisedModule):
    """A conv + BatchNorm backbone and a linear head on 1x6x6 images (4 classes)."""

    def __init__(self, optimizer: Callable[[Any], torch.optim.Optimizer]) -> None:
        super().__init__(optimizer, None, "epoch")
        self.backbone = nn.Sequential(
            nn.Conv2d(1, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.Conv2d(4, 4, 1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
        )
        self.head = nn.Linear(4 * 4 * 4, 4)
        self.build_metrics("acc", lambda: MulticlassAccuracy(num_classes=4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x).flatten(1))

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), logits.argmax(1), y

    def compute_example_losses(self, batch: Any) -> ExampleLosses:
        x, y = batch
        logits = self(x)
        losses = nn.functional.cross_entropy(logits, y, reduction="none")
        return ExampleLosses(losses, logits.argmax(1), y, logits=logits, classes=y)


def loader() -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(16, 1, 6, 6, generator=generator)
    y = torch.randint(0, 4, (16,), generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=4)


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def trick_callbacks(name: str, second: bool = False) -> list[pl.Callback]:
    part = "head" if second else "backbone"
    builders: dict[str, Callable[[], list[pl.Callback]]] = {
        "iterative_pruning": lambda: [
            IterativeMagnitudePruning(
                amount=0.5,
                rounds=2,
                epochs_per_round=1,
                monitor=None,
                verbose=False,
                include=part if second else None,
            )
        ],
        "accelerated_pruning": lambda: [
            AcceleratedIMP(
                amount=0.5,
                rounds=2,
                epochs_per_round=1,
                accelerated_epochs=1,
                monitor=None,
                verbose=False,
                include=part if second else None,
            )
        ],
        "norm_loss": lambda: [NormLoss(strength=0.1, include=part)],
        "weight_align": lambda: [
            WeightAlign(include=part, include_linear=True, exclude_classifier=False)
        ],
        "bnsr": lambda: [BNSR(include=r"backbone\.4" if second else r"backbone\.1")],
        "weight_norm_supervision": lambda: [
            WeightNormSupervision(groups=[NormGroup(f"g{int(second)}", bound=0.5, include=part)])
        ],
        "importance_sampling": lambda: [AdaptiveImportanceSampling(refresh_every=2)],
        "sgdg2": lambda: [OptimizerSupport()],  # their Lightning support (only the first acts)
        "frank_wolfe": lambda: [OptimizerSupport()],
    }
    return builders[name]()


OPTIMIZERS: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
    "sgdg2": lambda params: SGDG2(params, lr=0.02),
    "frank_wolfe": lambda params: FrankWolfe(params, lr=1e-2, inner_steps=2),
}
