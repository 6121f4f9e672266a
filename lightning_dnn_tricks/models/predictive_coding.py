"""Reference predictive coding network (PCN) with global recurrent processing, for images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.models.base import SchedulerInterval, SupervisedModule, adamw
from lightning_dnn_tricks.validation import check_number

States = list[torch.Tensor]


class PredictiveCodingNetwork(SupervisedModule):
    """Predictive coding network (Wen et al., ICML 2018) for image classification, small scale.

    Layer ``l`` holds a representation ``r_l`` (``r_0`` is the input ``x``). A feedforward
    convolution ``FF_l`` maps ``r_{l-1}`` up, a feedback transposed convolution ``FB_l`` predicts
    ``r_{l-1}`` from ``r_l``. After one feedforward sweep ``r_l = relu(FF_l(r_{l-1}))``, each
    *cycle* runs::

        top-down:  p_{l-1} = FB_l(r_l);  r_{l-1} <- relu(a_l * p_{l-1} + (1 - a_l) * r_{l-1})
                   (l = L..2; the input r_0 is never changed)
        bottom-up: r_l <- relu(r_l + b_l * FF_l(r_{l-1} - p_{l-1}))    (l = 1..L, in order:
                   layer l sees the r_{l-1} just updated)

    with learnable per-layer, per-channel update rates ``a_l = relu(feedback_rates[l])`` and
    ``b_l = relu(feedforward_rates[l])``. The logits are a linear head on the global average of
    ``r_L``. Training runs ``cycles`` cycles; validation and test run ``eval_cycles`` (more cycles
    than trained: the stability question Weight Norm Supervision addresses).

    Parameter names, for selecting groups: ``feedforward.<l>.weight`` (``nn.Conv2d``),
    ``feedback.<l>.weight`` (``nn.ConvTranspose2d``), ``feedforward_rates.<l>``,
    ``feedback_rates.<l>`` and ``head``.

    Args:
        in_channels: input channels (>= 1).
        hidden_channels: output channels of each layer (non-empty, each >= 1).
        strides: stride of each layer's convolution (one per layer, each >= 1).
        kernel_size: odd convolution kernel size (>= 1); padding keeps ``ceil(size / stride)``.
        num_classes: number of classes (>= 2).
        cycles: recurrent cycles in training (>= 0; 0 is a feedforward network).
        eval_cycles: cycles in validation and test (>= 0); ``None``: ``cycles``.
        feedback_rate: initial ``a_l`` (in [0, 1]).
        feedforward_rate: initial ``b_l`` (>= 0).
        optimizer: callable building the optimizer from the parameters; default
            ``lightning_dnn_tricks.models.adamw``.
        scheduler: optional callable building a learning-rate scheduler from the optimizer.
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.

    Raises:
        ValueError: an argument is out of range (the message names it).

    Examples:
        >>> import torch
        >>> model = PredictiveCodingNetwork(hidden_channels=(8, 16), strides=(1, 2), cycles=3)
        >>> model(torch.randn(2, 1, 8, 8)).shape
        torch.Size([2, 10])
        >>> len(model.trajectory(torch.randn(2, 1, 8, 8), cycles=5))  # cycle 0 (sweep) to 5
        6

    Note:
        The update follows the global-recurrent PCN of Wen et al. (2018) as published in
        ``libilab/PCN-with-Global-Recurrent-Processing``; we use strided convolutions instead of
        max-pooling between layers (so each feedback transposed conv inverts its feedforward
        conv's shape), no biases in the convolutions (a bias in ``FF_l`` would add to ``r_l``
        every cycle even when the prediction error is zero), and a single linear head.
    """

    def __init__(
        self,
        in_channels: int = 1,
        hidden_channels: Sequence[int] = (16, 32),
        strides: Sequence[int] = (1, 2),
        kernel_size: int = 3,
        num_classes: int = 10,
        cycles: int = 3,
        eval_cycles: int | None = None,
        feedback_rate: float = 0.5,
        feedforward_rate: float = 1.0,
        optimizer: OptimizerCallable = adamw,
        scheduler: LRSchedulerCallable | None = None,
        scheduler_interval: SchedulerInterval = "epoch",
    ) -> None:
        super().__init__(optimizer, scheduler, scheduler_interval)
        check_number("in_channels", in_channels, low=1, integer=True)
        _check_sequence("hidden_channels", hidden_channels, None)
        _check_sequence("strides", strides, len(hidden_channels))
        check_number("kernel_size", kernel_size, low=1, integer=True)
        if kernel_size % 2 == 0:
            raise ValueError(f"`kernel_size` must be odd, got {kernel_size}.")
        check_number("num_classes", num_classes, low=2, integer=True)
        check_number("cycles", cycles, low=0, integer=True)
        if eval_cycles is not None:
            check_number("eval_cycles", eval_cycles, low=0, integer=True)
        check_number("feedback_rate", feedback_rate, low=0.0, high=1.0)
        check_number("feedforward_rate", feedforward_rate, low=0.0)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cycles = cycles
        self.eval_cycles = cycles if eval_cycles is None else eval_cycles
        inputs = [in_channels, *hidden_channels[:-1]]
        pad = kernel_size // 2
        self.feedforward = nn.ModuleList(
            nn.Conv2d(c_in, c_out, kernel_size, s, pad, bias=False)
            for c_in, c_out, s in zip(inputs, hidden_channels, strides, strict=True)
        )
        self.feedback = nn.ModuleList(
            nn.ConvTranspose2d(c_out, c_in, kernel_size, s, pad, bias=False)
            for c_in, c_out, s in zip(inputs, hidden_channels, strides, strict=True)
        )
        self.feedforward_rates = nn.ParameterList(
            nn.Parameter(torch.full((1, c, 1, 1), float(feedforward_rate))) for c in hidden_channels
        )
        self.feedback_rates = nn.ParameterList(
            nn.Parameter(torch.full((1, c, 1, 1), float(feedback_rate))) for c in inputs[1:]
        )
        self.head = nn.Linear(hidden_channels[-1], num_classes)
        self.build_metrics(
            "acc", lambda: MulticlassAccuracy(num_classes=num_classes, average="micro")
        )

    def initial_states(self, x: torch.Tensor) -> States:
        """The feedforward sweep: ``r_l = relu(FF_l(r_{l-1}))`` for every layer."""
        states: States = []
        for conv in self.feedforward:
            x = F.relu(conv(x))
            states.append(x)
        return states

    def cycle(self, x: torch.Tensor, states: Sequence[torch.Tensor]) -> States:
        """One cycle: top-down feedback updates, then bottom-up prediction-error updates."""
        r = list(states)
        below = [x, *r[:-1]]
        predictions: list[torch.Tensor] = [x] * len(r)
        for i in range(len(r) - 1, 0, -1):
            predictions[i] = self.feedback[i](r[i], output_size=below[i].shape[-2:])
            a = F.relu(self.feedback_rates[i - 1])
            r[i - 1] = F.relu(a * predictions[i] + (1 - a) * r[i - 1])
        predictions[0] = self.feedback[0](r[0], output_size=x.shape[-2:])
        for i in range(len(r)):  # sequential: layer i sees the updated r_{i-1}
            b = F.relu(self.feedforward_rates[i])
            lower = x if i == 0 else r[i - 1]
            r[i] = F.relu(r[i] + b * self.feedforward[i](lower - predictions[i]))
        return r

    def readout(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from the top representation (global average pooling, linear head)."""
        logits: torch.Tensor = self.head(states[-1].mean(dim=(-2, -1)))
        return logits

    def trajectory(self, x: torch.Tensor, cycles: int) -> list[States]:
        """The states after the feedforward sweep and after each of ``cycles`` cycles."""
        states = [self.initial_states(x)]
        for _ in range(cycles):
            states.append(self.cycle(x, states[-1]))
        return states

    def forward(self, x: torch.Tensor, cycles: int | None = None) -> torch.Tensor:
        """Logits after ``cycles`` cycles (default: ``cycles`` training, else ``eval_cycles``)."""
        if cycles is None:
            cycles = self.cycles if self.training else self.eval_cycles
        states = self.initial_states(x)
        for _ in range(cycles):
            states = self.cycle(x, states)
        return self.readout(states)

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the cross-entropy, the logits and the targets of an ``(x, y)`` batch."""
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y


def _check_sequence(name: str, values: Sequence[int], length: int | None) -> None:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence) or not values:
        raise ValueError(f"`{name}` must be a non-empty sequence of integers, got {values!r}.")
    if length is not None and len(values) != length:
        raise ValueError(f"`{name}` must have {length} entries (one per layer), got {values!r}.")
    for value in values:
        check_number(name, value, low=1, integer=True)
