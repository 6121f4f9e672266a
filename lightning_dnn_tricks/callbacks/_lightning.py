"""Every use of Lightning's private internals, in one place.

Lightning has no public API for these needs. Each function names the private attribute it
touches, and ``tests/callbacks/test_lightning_internals.py`` checks that each still exists in the
installed Lightning (whose range is bounded in ``pyproject.toml``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, StochasticWeightAveraging
from torch import nn

try:  # Lightning >= 2.6
    from lightning.pytorch.callbacks import WeightAveraging
except ImportError:  # pragma: no cover - older Lightning has no WeightAveraging
    WeightAveraging = None  # type: ignore[assignment,misc]

#: The private attributes this module reads or writes, as ``(owner, attribute)`` descriptions.
PRIVATE_ACCESSES: tuple[tuple[str, str], ...] = (
    ("Trainer", "_logger_connector.should_update_logs"),
    ("_FitLoop", "_combined_loader"),
    ("_FitLoop", "_data_fetcher"),
    ("_FitLoop", "restarted_on_epoch_end"),
    ("Strategy", "_layer_sync"),
    ("WeightAveraging", "_average_model"),
    ("WeightAveraging", "_copy_average_to_current"),
    ("StochasticWeightAveraging", "_average_model"),
)


def should_log(trainer: pl.Trainer) -> bool:
    """Whether a value logged now with ``on_step=True`` reaches the loggers.

    The one logging rule of every trick: Lightning's own decision for this step, which follows the
    Trainer's ``log_every_n_steps`` (and logs on the last step of a stopping run). Tricks compute
    their health metrics only when this is true, so telemetry costs nothing on other steps.
    """
    return bool(trainer._logger_connector.should_update_logs)


def training_loader_slots(trainer: pl.Trainer) -> tuple[Any, Any]:
    """The fit loop's ``CombinedLoader`` and data fetcher (``None`` when not set up yet).

    Lightning has no public way to swap the training loader once it is set up; the importance
    sampling callback replaces it in the combined loader and re-creates the fetcher's iterator.
    """
    return (
        getattr(trainer.fit_loop, "_combined_loader", None),
        getattr(trainer.fit_loop, "_data_fetcher", None),
    )


def restarted_into_finished_epoch(trainer: pl.Trainer) -> bool:
    """Whether the fit loop restarted an epoch that the checkpoint had already finished.

    Lightning 2.6 does so for iteration-based training (``max_steps`` set) resumed from a
    checkpoint written at an epoch's end, and then asks the training loader for one batch more.
    """
    return bool(getattr(trainer.fit_loop, "restarted_on_epoch_end", False))


def syncs_batchnorm(trainer: pl.Trainer) -> bool:
    """Whether the strategy converts BatchNorm layers to SyncBatchNorm (``sync_batchnorm=True``)."""
    return getattr(trainer.strategy, "_layer_sync", None) is not None


def is_weight_averaging(callback: Callback) -> bool:
    """Whether ``callback`` keeps an averaged copy of the weights (EMA/WeightAveraging, SWA)."""
    types: tuple[type, ...] = (StochasticWeightAveraging,)
    if WeightAveraging is not None:
        types += (WeightAveraging,)
    return isinstance(callback, types)


def averaged_module(callback: Callback) -> nn.Module | None:
    """The module holding the averaged weights of an averaging callback (``None`` before setup).

    ``WeightAveraging._average_model`` is a ``torch.optim.swa_utils.AveragedModel`` whose
    ``.module`` is a copy of the LightningModule; ``StochasticWeightAveraging._average_model`` is
    the copy itself. Either way its parameter names are the LightningModule's.
    """
    average = getattr(callback, "_average_model", None)
    if average is None:
        return None
    if WeightAveraging is not None and isinstance(callback, WeightAveraging):
        average = average.module
    return average if isinstance(average, nn.Module) else None


class AverageUpdateHook:
    """Runs a trick's code around the updates and the transfer of an averaging callback.

    Lightning's averaging callbacks update their average at points of their own choosing
    (``on_train_batch_end``, ``on_train_epoch_end``/``start``) and copy it into the model when
    training ends; the order of the callbacks would decide whether a trick's edits are seen.
    Wrapping the update and the transfer makes it independent of the order:

    - ``before_update(model)`` and ``after_update(model, average)`` run around every update
      (FrankWolfe swaps its anchors in for it; pruning masks the average right after it);
    - ``before_transfer(model)`` runs before the average is copied into the model (FrankWolfe
      puts its anchors in, so that nothing writes them over the average afterwards).

    :meth:`remove` puts the callback's own methods back.
    """

    def __init__(
        self,
        callback: Callback,
        before_update: Callable[[nn.Module], None] | None = None,
        after_update: Callable[[nn.Module, nn.Module], None] | None = None,
        before_transfer: Callable[[nn.Module], None] | None = None,
    ) -> None:
        self._patched: list[Any] = []

        def around(update: Callable[[], None], model: nn.Module, average: nn.Module) -> None:
            if before_update is not None:
                before_update(model)
            update()
            if after_update is not None:
                after_update(model, average)

        def transferring(model: nn.Module) -> None:
            if before_transfer is not None:
                before_transfer(model)

        if WeightAveraging is not None and isinstance(callback, WeightAveraging):
            averaged = callback._average_model
            if averaged is None:
                return
            update = averaged.update_parameters
            copy_average = callback._copy_average_to_current

            def update_average(model: Any) -> None:
                around(lambda: update(model), model, averaged.module)

            def copy_to_current(model: Any) -> None:
                transferring(model)
                copy_average(model)

            self._patch(averaged, "update_parameters", update_average)
            self._patch(callback, "_copy_average_to_current", copy_to_current)
        elif isinstance(callback, StochasticWeightAveraging):
            swa_update = callback.update_parameters
            swa_transfer = callback.transfer_weights

            def update_swa(average: Any, model: Any, *args: Any) -> None:
                around(lambda: swa_update(average, model, *args), model, average)

            def transfer_swa(source: Any, model: Any) -> None:
                transferring(model)
                swa_transfer(source, model)

            self._patch(callback, "update_parameters", update_swa)
            self._patch(callback, "transfer_weights", transfer_swa)

    def _patch(self, owner: Any, name: str, replacement: Callable[..., None]) -> None:
        setattr(owner, name, replacement)
        self._patched.append((owner, name))

    def remove(self) -> None:
        """Put the averaging callback's own methods back."""
        for owner, name in self._patched:
            owner.__dict__.pop(name, None)
        self._patched = []


def averaging_callbacks(trainer: pl.Trainer) -> list[Callback]:
    """The Trainer's callbacks that keep averaged weights."""
    return [cb for cb in trainer.callbacks if is_weight_averaging(cb)]  # type: ignore[attr-defined]
