"""Reference recurrent model (vanilla RNN, GRU or LSTM) for regression or classification."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics import MeanSquaredError
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.models.base import (
    ExampleLosses,
    SchedulerInterval,
    SupervisedModule,
    adamw,
)
from lightning_dnn_tricks.validation import check_choice, check_number

Cell = Literal["rnn", "gru", "lstm"]
Task = Literal["regression", "classification"]
Readout = Literal["last", "sequence"]
CELLS: dict[str, Callable[..., nn.RNNBase]] = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
TASKS: tuple[Task, ...] = ("regression", "classification")
READOUTS: tuple[Readout, ...] = ("last", "sequence")


class SequenceModel(SupervisedModule):
    """Recurrent network with a linear head, for sequence regression or classification.

    Inputs are batch-first float tensors ``(B, T, input_size)``. With ``readout="last"`` the head
    reads the last time step's hidden state of the top layer and predicts ``(B, output_size)``;
    with ``readout="sequence"`` it predicts at every time step, ``(B, T, output_size)``.

    Targets of an ``(x, y)`` batch:

    - regression: ``(B, output_size)`` (``"last"``) or ``(B, T, output_size)`` (``"sequence"``);
      when ``output_size == 1`` the trailing dimension may be left out. Loss: mean squared error,
      logged as ``*/loss`` and ``*/mse``.
    - classification: integer class indices ``(B,)`` (``"last"``) or ``(B, T)`` (``"sequence"``,
      e.g. the copy-memory task); ``output_size`` is the number of classes. Loss: cross-entropy
      averaged over all time steps, logged as ``*/loss`` and ``*/acc`` (top-1 over all predictions).

    ``train/*`` is logged per step, ``val/*`` and ``test/*`` per epoch, as in
    ``TimmClassifier``. The recurrent layer is ``self.rnn`` (a
    ``torch.nn.RNN``/``GRU``/``LSTM``) and the head ``self.head`` (a ``torch.nn.Linear``).

    Args:
        cell: ``"rnn"`` (vanilla tanh RNN), ``"gru"`` or ``"lstm"``.
        input_size: number of input features per time step (>= 1).
        hidden_size: number of hidden units per layer (>= 1).
        num_layers: number of stacked recurrent layers (>= 1).
        output_size: regression outputs (>= 1) or number of classes (>= 2).
        task: ``"regression"`` or ``"classification"``.
        readout: ``"last"`` (one prediction per sequence) or ``"sequence"`` (one per time step).
        optimizer: callable building the optimizer from the parameters; default
            ``lightning_dnn_tricks.models.adamw`` (AdamW, lr 1e-3, weight decay 1e-2).
        scheduler: optional callable building a learning-rate scheduler from the optimizer
            (``ReduceLROnPlateau`` monitors ``val/loss``).
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        eval_prefix_steps: zero-input steps run before every sequence outside training (>= 0):
            evaluates the recurrence over longer runs than trained, on the same labels when a
            zero input carries no signal (the adding problem). With ``readout="sequence"`` the
            prefix's outputs are dropped.

    Raises:
        ValueError: an argument is out of range (the message names it), or a batch's targets do not
            have the shape above.

    Examples:
        >>> import torch
        >>> from lightning_dnn_tricks.models import SequenceModel
        >>> model = SequenceModel("lstm", input_size=2, hidden_size=16, output_size=1)
        >>> model(torch.randn(4, 50, 2)).shape
        torch.Size([4, 1])
    """

    def __init__(
        self,
        cell: Cell = "rnn",
        input_size: int = 2,
        hidden_size: int = 64,
        num_layers: int = 1,
        output_size: int = 1,
        task: Task = "regression",
        readout: Readout = "last",
        optimizer: OptimizerCallable = adamw,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: SchedulerInterval = "epoch",
        eval_prefix_steps: int = 0,
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval)
        check_number("eval_prefix_steps", eval_prefix_steps, low=0, integer=True)
        check_choice("cell", cell, tuple(CELLS))
        check_choice("task", task, TASKS)
        check_choice("readout", readout, READOUTS)
        check_number("input_size", input_size, low=1, integer=True)
        check_number("hidden_size", hidden_size, low=1, integer=True)
        check_number("num_layers", num_layers, low=1, integer=True)
        min_outputs = 2 if task == "classification" else 1
        check_number("output_size", output_size, low=min_outputs, integer=True)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.task = task
        self.readout = readout
        self.output_size = output_size
        self.eval_prefix_steps = eval_prefix_steps
        self.rnn = CELLS[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True)
        self.head = nn.Linear(hidden_size, output_size)
        if task == "regression":
            self.build_metrics("mse", MeanSquaredError)
        else:
            self.build_metrics(
                "acc", lambda: MulticlassAccuracy(num_classes=output_size, average="micro")
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``(B, output_size)`` (``"last"``) or ``(B, T, output_size)`` (``"sequence"``)."""
        prefix = 0 if self.training else self.eval_prefix_steps
        hidden, _ = self.rnn(F.pad(x, (0, 0, prefix, 0)) if prefix else x)
        if self.readout == "last":
            hidden = hidden[:, -1]
        elif prefix:
            hidden = hidden[:, prefix:]
        out: torch.Tensor = self.head(hidden)
        return out

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the loss, the predictions and the targets of an ``(x, y)`` batch.

        Classification predictions and targets are flattened over time steps:
        ``(B * T, C)`` and ``(B * T,)``.
        """
        out, y, preds, target = self._predict(batch)
        if self.task == "regression":
            return F.mse_loss(out, y), out, y
        return F.cross_entropy(preds, target), preds, target

    def compute_example_losses(self, batch: Any) -> ExampleLosses:
        """Per-example losses of an ``(x, y)`` batch (mean over time steps and outputs).

        Classification also returns the ``(B, [T,] C)`` logits and targets for the
        ``"logit_grad"`` score; regression has none (use the ``"loss"`` score).
        """
        out, y, preds, target = self._predict(batch)
        if self.task == "regression":
            losses = F.mse_loss(out, y, reduction="none").flatten(1).mean(dim=1)
            return ExampleLosses(losses, out, y)
        losses = F.cross_entropy(preds, target, reduction="none").view(len(out), -1).mean(dim=1)
        return ExampleLosses(losses, preds, target, out, y)

    def _predict(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(outputs, targets)`` of an ``(x, y)`` batch, checked, and as the metric sees them.

        Regression: the targets get the outputs' trailing axis when ``output_size`` is 1, and
        the metric sees both as they are; classification: flattened over time steps.
        """
        x, y = batch
        out = self(x)
        if self.task == "regression":
            if self.output_size == 1 and y.shape == out.shape[:-1]:
                y = y.unsqueeze(-1)
            self._check_target(y, out.shape)
            return out, y, out, y
        self._check_target(y, out.shape[:-1])
        return out, y, out.reshape(-1, self.output_size), y.reshape(-1)

    def _check_target(self, target: torch.Tensor, expected: torch.Size) -> None:
        if target.shape != expected:
            raise ValueError(
                f"{self.task} targets with readout={self.readout!r} must have shape "
                f"{tuple(expected)} for this batch, got {tuple(target.shape)}."
            )
