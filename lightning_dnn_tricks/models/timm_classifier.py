"""Reference image classifier: any timm architecture trained with cross-entropy."""

from __future__ import annotations

import difflib
from typing import Any

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.models.base import (
    ExampleLosses,
    SchedulerInterval,
    SupervisedModule,
    adamw,
)
from lightning_dnn_tricks.validation import check_number


def check_timm_model_name(model_name: str) -> None:
    """Raise ``ValueError`` unless timm knows ``model_name``, suggesting close matches.

    Names with a source prefix (``hf-hub:``, ``local-dir:``) are left to timm. A pretrained tag
    (``resnet18.a1_in1k``) is accepted; only the architecture has to be registered.
    """
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"`model_name` must be a non-empty string, got {model_name!r}.")
    if ":" in model_name or timm.is_model(model_name):
        return
    architecture = model_name.split(".", 1)[0]
    matches = difflib.get_close_matches(architecture, timm.list_models(), n=5, cutoff=0.6)
    hint = f" Did you mean one of: {', '.join(matches)}?" if matches else ""
    raise ValueError(
        f"`model_name` must be a model known to timm (see `timm.list_models()`), "
        f"got {model_name!r}.{hint}"
    )


class TimmClassifier(SupervisedModule):
    """Image classifier around ``timm.create_model`` (random init), trained with cross-entropy.

    The optimizer and scheduler are injected the LightningCLI way, as callables that receive the
    parameters (respectively the optimizer); in a YAML config::

        model:
          class_path: lightning_dnn_tricks.models.TimmClassifier
          init_args:
            model_name: resnet18
            optimizer: {class_path: torch.optim.SGD, init_args: {lr: 0.1, momentum: 0.9}}
            scheduler: {class_path: torch.optim.lr_scheduler.CosineAnnealingLR,
                        init_args: {T_max: 100}}

    Batches are ``(x, y)`` with ``x`` of shape ``(B, in_chans, H, W)`` and ``y`` integer class
    indices ``(B,)``. Logs ``train/loss`` and ``train/acc`` per step; ``val/loss``, ``val/acc``
    (progress bar), ``test/loss`` and ``test/acc`` per epoch. Accuracy is top-1 over all examples
    (torchmetrics ``MulticlassAccuracy(average="micro")``). Importance-sampled training batches
    (:class:`~lightning_dnn_tricks.callbacks.AdaptiveImportanceSampling`) are trained on the
    importance-weighted mean cross-entropy, with the logits recorded for the scores.

    Args:
        model_name: a timm architecture, e.g. ``"resnet18"``, ``"mobilenetv3_small_050"``,
            ``"vit_tiny_patch16_224"``. Weights are always randomly initialised
            (``pretrained=False``).
        num_classes: number of classes (>= 2).
        in_chans: number of input channels (>= 1).
        model_kwargs: extra keyword arguments of ``timm.create_model``, e.g. ``{"img_size": 32}``
            for a ViT on 32x32 images or ``{"drop_rate": 0.1}``.
        optimizer: callable building the optimizer from the parameters; default
            ``lightning_dnn_tricks.models.adamw`` (AdamW, lr 1e-3, weight decay 1e-2).
        scheduler: optional callable building a learning-rate scheduler from the optimizer
            (``ReduceLROnPlateau`` monitors ``val/loss``).
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        label_smoothing: label smoothing of the cross-entropy, in [0, 1).

    Raises:
        ValueError: an argument is out of range, or timm does not know ``model_name`` (the message
            lists close matches).

    Examples:
        >>> import torch
        >>> from lightning_dnn_tricks.models import TimmClassifier
        >>> model = TimmClassifier("resnet18", num_classes=10, optimizer=torch.optim.SGD)
        >>> model(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        model_kwargs: dict[str, Any] | None = None,
        optimizer: OptimizerCallable = adamw,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: SchedulerInterval = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval)
        check_timm_model_name(model_name)
        check_number("num_classes", num_classes, low=2, integer=True)
        check_number("in_chans", in_chans, low=1, integer=True)
        check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_inclusive=False)
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise ValueError(f"`model_kwargs` must be a dict or None, got {model_kwargs!r}.")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.label_smoothing = label_smoothing
        self.model = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_chans,
            **(model_kwargs or {}),
        )
        self.build_metrics(
            "acc", lambda: MulticlassAccuracy(num_classes=num_classes, average="micro")
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits ``(B, num_classes)`` of images ``x`` ``(B, in_chans, H, W)``."""
        logits: torch.Tensor = self.model(x)
        return logits

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the cross-entropy, the logits and the targets of an ``(x, y)`` batch."""
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return loss, logits, y

    def compute_example_losses(self, batch: Any) -> ExampleLosses:
        """Per-example cross-entropies of an ``(x, y)`` batch, with the logits for the scores."""
        x, y = batch
        logits = self(x)
        losses = F.cross_entropy(logits, y, reduction="none", label_smoothing=self.label_smoothing)
        return ExampleLosses(losses, logits, y, logits, y, self.label_smoothing)
