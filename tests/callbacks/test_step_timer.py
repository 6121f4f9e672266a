"""StepTimer: it synchronises a CUDA module's device at both timing points, and nothing on CPU."""

from __future__ import annotations

import itertools
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader

import lightning_dnn_tricks.callbacks.step_timer as step_timer
from lightning_dnn_tricks.callbacks import StepTimer


def _record(monkeypatch: pytest.MonkeyPatch, clock: bool) -> list[Any]:
    """Replace ``torch.cuda.synchronize`` (and the clock) by recorders of one event list."""
    events: list[Any] = []
    ticks = itertools.count()

    def synchronize(device: Any = None) -> None:
        events.append(("synchronize", device))

    def perf_counter() -> float:
        events.append("clock")
        return float(next(ticks))

    monkeypatch.setattr(torch.cuda, "synchronize", synchronize)
    if clock:
        monkeypatch.setattr(step_timer.time, "perf_counter", perf_counter)
    return events


def test_a_cuda_module_is_synchronised_before_each_clock_reading(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    events = _record(monkeypatch, clock=True)
    cuda = torch.device("cuda", 1)  # a device object needs no GPU; only the mock "runs" on it
    module: Any = SimpleNamespace(device=cuda)
    timer = StepTimer(warmup_steps=0)
    for step in range(2):
        timer.on_train_batch_start(None, module, None, step)  # type: ignore[arg-type]
        timer.on_train_batch_end(None, module, None, None, step)  # type: ignore[arg-type]
    step_events = [("synchronize", cuda), "clock", ("synchronize", cuda), "clock"]
    assert events == step_events * 2
    assert timer.durations == [1.0, 1.0]


def test_a_cpu_module_is_never_synchronised(monkeypatch: pytest.MonkeyPatch) -> None:
    events = _record(monkeypatch, clock=False)
    timer = StepTimer(warmup_steps=0)
    trainer = pl.Trainer(callbacks=[timer], max_epochs=1, **QUIET_TRAINER)
    trainer.fit(TinyConvNet(), tiny_loader(n=12))
    assert len(timer.durations) == 3 and all(d > 0 for d in timer.durations)
    assert events == []
