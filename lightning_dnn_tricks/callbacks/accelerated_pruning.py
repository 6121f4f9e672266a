"""Lightning adapter for Accelerated IMP: shortened intermediate rounds, optional adaptive stop."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn

from lightning_dnn_tricks.callbacks.pruning import (
    PRUNING_CAPABILITIES,
    IterativeMagnitudePruning,
    Rewind,
)
from lightning_dnn_tricks.functional.pruning import Scope, mask_jaccard
from lightning_dnn_tricks.nn.selection import WEIGHT_LAYER_TYPES
from lightning_dnn_tricks.registry import TrickSpec, register_trick
from lightning_dnn_tricks.validation import check_number

AIMP_SPEC = register_trick(
    TrickSpec(
        name="accelerated_pruning",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.accelerated_pruning:AcceleratedIMP",
        summary="Accelerated IMP: iterative magnitude pruning with shortened intermediate rounds "
        "(schedule partly our reconstruction).",
        paper="Zullich, Medvet, Pellegrino, Ansuini, AIMP, ICPR 2020",
        capabilities=PRUNING_CAPABILITIES,
        reconstruction=True,
        docs_page="methods/pruning.md",
    )
)


class AcceleratedIMP(IterativeMagnitudePruning):
    """Accelerated IMP (Zullich et al., ICPR 2020): IMP whose rounds but the last are shortened.

    Identical to :class:`IterativeMagnitudePruning` except that rounds ``0 .. rounds-1`` train for
    ``accelerated_epochs`` epochs (an int, or a fraction of ``epochs_per_round`` rounded up) and
    only the last round gets the full ``epochs_per_round``: the magnitude ranking that decides the
    next mask settles long before the accuracy does. Total epochs:
    ``rounds * accelerated + epochs_per_round``.

    With ``stability_threshold`` an intermediate round also ends early once the mask it would
    produce is stable: at every epoch start the would-be next mask is computed from the current
    weights, and the round ends when its Jaccard overlap with the previous epoch's would-be mask
    is at least the threshold. ``max_epochs`` is then an upper bound and the run stops at the end
    of the last round.

    Args:
        accelerated_epochs: epochs of each intermediate round: an int >= 1, or a float in (0, 1]
            (fraction of ``epochs_per_round``, rounded up, at least 1 epoch).
        stability_threshold: end an intermediate round once the would-be next mask's Jaccard
            overlap between consecutive epochs reaches this value, in (0, 1]; ``None`` disables.
        amount: fraction of the surviving selected weights pruned each round, in (0, 1).
        rounds: number of pruning rounds (>= 1).
        epochs_per_round: epochs of the last round, and the base of a fractional
            ``accelerated_epochs`` (>= 1).
        scope: ``"global"`` or ``"layerwise"`` magnitude ranking.
        rewind: ``"lr"``, ``"weights"``, ``"init"`` or ``"finetune"``
            (as in ``IterativeMagnitudePruning``).
        rewind_epoch: with ``rewind="weights"``: the epoch whose start is the rewind point.
        rewind_step: with ``rewind="weights"``: the optimizer step that is the rewind point.
        layer_types: module classes whose ``weight`` is pruned.
        include: regular expression on module names; only matching modules are pruned.
        exclude: regular expression on module names to leave unpruned.
        exclude_classifier: leave the final classifier layer unpruned.
        monitor: metric recorded at the end of each round, when logged; ``None`` to skip.
        export_path: save the permanently pruned ``state_dict`` to this file at the end; a
            relative path goes under the run's log directory (``trainer.log_dir``).
        export_submodule: dotted attribute of the LightningModule to export instead.
        verbose: print the round, sparsity and epochs left at every round.

    Raises:
        ValueError: an argument is out of range (the message names it).
        TrickConfigurationError: as :class:`IterativeMagnitudePruning`; ``accelerated_epochs``
            and ``stability_threshold`` are schedule arguments too (a change on resume is
            refused).

    Examples:
        >>> from lightning_dnn_tricks.callbacks import AcceleratedIMP
        >>> AcceleratedIMP(rounds=10, epochs_per_round=5, accelerated_epochs=0.4).total_epochs
        25

    Note:
        Our reconstruction of the schedule: the dense round 0 is shortened like the other
        intermediate rounds; the default ``accelerated_epochs=0.4`` (the paper's budget was not
        available) keeps ten rounds under half of IMP's epochs; the adaptive stop compares the
        would-be masks of consecutive epochs (Jaccard of the surviving sets).
    """

    spec = AIMP_SPEC
    _candidate: list[Tensor] | None
    jaccard: float | None

    def __init__(
        self,
        accelerated_epochs: int | float = 0.4,
        stability_threshold: float | None = None,
        amount: float = 0.2,
        rounds: int = 10,
        epochs_per_round: int = 10,
        scope: Scope = "global",
        rewind: Rewind = "lr",
        rewind_epoch: int | None = None,
        rewind_step: int | None = None,
        layer_types: Sequence[type[nn.Module]] = WEIGHT_LAYER_TYPES,
        include: str | None = None,
        exclude: str | None = None,
        exclude_classifier: bool = False,
        monitor: str | None = "val/acc",
        export_path: str | None = None,
        export_submodule: str | None = None,
        verbose: bool = True,
    ) -> None:
        if isinstance(accelerated_epochs, int) and not isinstance(accelerated_epochs, bool):
            check_number("accelerated_epochs", accelerated_epochs, low=1, integer=True)
        else:
            check_number(
                "accelerated_epochs", accelerated_epochs, low=0.0, high=1.0, low_inclusive=False
            )
        if stability_threshold is not None:
            check_number(
                "stability_threshold", stability_threshold, low=0.0, high=1.0, low_inclusive=False
            )
        self.accelerated_epochs = accelerated_epochs
        self.stability_threshold = stability_threshold
        super().__init__(
            amount=amount,
            rounds=rounds,
            epochs_per_round=epochs_per_round,
            scope=scope,
            rewind=rewind,
            rewind_epoch=rewind_epoch,
            rewind_step=rewind_step,
            layer_types=layer_types,
            include=include,
            exclude=exclude,
            exclude_classifier=exclude_classifier,
            monitor=monitor,
            export_path=export_path,
            export_submodule=export_submodule,
            verbose=verbose,
        )

    @property
    def accelerated_length(self) -> int:
        """Epochs of each intermediate round."""
        if isinstance(self.accelerated_epochs, int):
            return self.accelerated_epochs
        return max(1, math.ceil(self.accelerated_epochs * self.epochs_per_round - 1e-9))

    def round_epochs(self, index: int) -> int:
        return self.epochs_per_round if index >= self.rounds else self.accelerated_length

    def _describe_rounds(self) -> str:
        return f"{self.accelerated_length} epochs each but the last, {self.epochs_per_round} epochs"

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["candidate"] = None if self._candidate is None else [m.cpu() for m in self._candidate]
        state["jaccard"] = self.jaccard
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._candidate = state_dict["candidate"]
        self.jaccard = state_dict["jaccard"]

    def _reset_progress(self) -> None:
        super()._reset_progress()
        self._candidate = None
        self.jaccard = None

    def _next_round(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int, masks: list[Tensor]
    ) -> None:
        super()._next_round(trainer, pl_module, epoch, masks)
        self._candidate = None

    def _early_masks(self, trainer: pl.Trainer, elapsed: int) -> list[Tensor] | None:
        if self.stability_threshold is None or elapsed < 1:
            return None
        if self.rewind != "finetune" and self._snapshot is None:
            return None  # the rewind point of round 0 is not reached yet
        candidate = self._prune(trainer)
        previous, self._candidate = self._candidate, candidate
        if previous is None:
            return None
        self.jaccard = mask_jaccard(previous, candidate)
        stable = self.jaccard >= self.stability_threshold
        return candidate if stable else None
