"""The first-step check that a Lightning Trainer stepping our optimizers has ``OptimizerSupport``.

Pure Python (no Lightning import): ``callbacks.OptimizerSupport`` registers the Trainers it is set
up in and marks the optimizers it has checked; an optimizer that Lightning steps while neither
holds raises :class:`~lightning_dnn_tricks.TrickConfigurationError` naming the fix. Plain PyTorch
loops are never affected: the check looks only at who called ``step``.
"""

from __future__ import annotations

import sys
import weakref
from typing import Any

from torch.optim import Optimizer

from lightning_dnn_tricks.validation import TrickConfigurationError

#: Callers skipped on the way up from ``step``: torch's step wrappers and ``no_grad`` decorators,
#: its GradScaler (which Lightning's ``16-mixed`` precision steps through), our own modules.
_SKIPPED = ("torch.", "torch_xla.", "lightning_dnn_tricks.optim.")
#: The first other caller is Lightning's precision plugin when the Trainer steps the optimizer
#: (automatic optimisation, or ``self.optimizers().step()`` in manual optimisation).
_LIGHTNING = ("lightning.pytorch.", "pytorch_lightning.")
_MARK = "_lightning_support"

#: Trainers whose OptimizerSupport is set up for a fit (``setup`` to ``teardown``). Covers steps
#: taken before its ``on_fit_start`` marks the optimizers (the Tuner's, which run first).
_TRAINERS: weakref.WeakSet[Any] = weakref.WeakSet()


def register_trainer(trainer: Any, active: bool) -> None:
    """Record (``active``) or forget that ``trainer`` has OptimizerSupport set up for a fit."""
    if active:
        _TRAINERS.add(trainer)
    else:
        _TRAINERS.discard(trainer)


def mark_supported(optimizer: Optimizer, supported: bool) -> None:
    """Mark ``optimizer`` as checked and supported by OptimizerSupport for the current fit."""
    if supported:
        setattr(optimizer, _MARK, True)
    else:
        optimizer.__dict__.pop(_MARK, None)


def stepped_by_lightning() -> bool:
    """Whether the ``step`` being run was called by Lightning's Trainer (its precision plugin)."""
    frame = sys._getframe(1)
    while frame is not None:
        module = frame.f_globals.get("__name__") or ""
        if not module.startswith(_SKIPPED):
            return module.startswith(_LIGHTNING)
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _in_a_supported_trainer(optimizer: Optimizer) -> bool:
    for trainer in list(_TRAINERS):
        for candidate in getattr(trainer, "optimizers", ()):
            if getattr(candidate, "_optimizer", candidate) is optimizer:
                return True
    return False


def check_lightning_support(optimizer: Optimizer, without_it: str) -> None:
    """Raise when a Lightning Trainer steps ``optimizer`` without OptimizerSupport.

    A dict lookup per step once OptimizerSupport has marked the optimizer; otherwise a walk up a
    few frames (about a microsecond). ``without_it`` says what goes wrong without the callback.
    """
    if optimizer.__dict__.get(_MARK) or not stepped_by_lightning():
        return
    if _in_a_supported_trainer(optimizer):
        return
    name = type(optimizer).__name__
    raise TrickConfigurationError(
        f"{name} is stepped by a Lightning Trainer that has no OptimizerSupport callback, which "
        f"{name} needs under Lightning: without it {without_it}. Add it to the Trainer: "
        "`from lightning_dnn_tricks.callbacks import OptimizerSupport` and "
        "`Trainer(callbacks=[OptimizerSupport()])` (in a LightningCLI config: "
        "`--trainer.callbacks+=lightning_dnn_tricks.callbacks.OptimizerSupport`; the `ldt` "
        "command adds it for you). Plain PyTorch loops need no callback."
    )
