"""The report of a model surgery, and re-pointing an optimizer at the parameters it changed.

:class:`SurgerySummary` is returned by :func:`~lightning_dnn_tricks.nn.surgery.replace_modules` and
:func:`~lightning_dnn_tricks.nn.surgery.register_parametrization_on`. Pure PyTorch.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_dnn_tricks.validation import TrickWarning

__all__ = ["SkippedLayer", "SurgerySummary", "class_name", "update_optimizer_params"]


@dataclass(frozen=True)
class SkippedLayer:
    """A selected layer that a surgery left unchanged, and why."""

    name: str
    type_name: str
    reason: str


@dataclass
class SurgerySummary:
    """What a surgery changed, skipped and found already applied.

    Attributes:
        tag: the surgery's name (used in messages and in :func:`applied_tags`).
        changed: number of changed layers per class name (the class before the change).
        changed_names: qualified names of the changed layers.
        already_applied: qualified names of selected layers this surgery had already changed.
        skipped: selected layers left unchanged, with the reason.
        replaced_parameters: ``old -> new`` for every parameter object that was replaced.
        added_parameters: new parameters (e.g. a learnable gain), each keyed by a parameter of
            the same layer that existed before (so an optimizer can put it in that group).
    """

    tag: str
    changed: dict[str, int] = field(default_factory=dict)
    changed_names: list[str] = field(default_factory=list)
    already_applied: list[str] = field(default_factory=list)
    skipped: list[SkippedLayer] = field(default_factory=list)
    replaced_parameters: dict[Tensor, Tensor] = field(default_factory=dict)
    added_parameters: dict[Tensor, list[Tensor]] = field(default_factory=dict)

    @property
    def num_changed(self) -> int:
        """Total number of layers changed by this call."""
        return sum(self.changed.values())

    def record_change(self, name: str, module: nn.Module) -> None:
        """Count ``module`` (called ``name``) as changed."""
        type_name = class_name(module)
        self.changed[type_name] = self.changed.get(type_name, 0) + 1
        self.changed_names.append(name)

    def skip(self, name: str, module: nn.Module, reason: str) -> None:
        """Record that ``module`` (called ``name``) was left unchanged because of ``reason``."""
        self.skipped.append(SkippedLayer(name, class_name(module), reason))

    def __str__(self) -> str:
        counts = ", ".join(f"{name}: {count}" for name, count in sorted(self.changed.items()))
        plural = "" if self.num_changed == 1 else "s"
        text = f"{self.tag}: changed {self.num_changed} layer{plural}"
        if counts:
            text += f" ({counts})"
        if self.already_applied:
            text += f"; {len(self.already_applied)} already applied"
        if self.skipped:
            reasons = Counter(f"{s.type_name}: {s.reason}" for s in self.skipped)
            listed = "; ".join(f"{count} x {reason}" for reason, count in sorted(reasons.items()))
            text += f"; skipped {len(self.skipped)} ({listed})"
        return text

    def warn_if_empty(self, trick_name: str) -> None:
        """Warn (:class:`~lightning_dnn_tricks.TrickWarning`) when no layer matched at all.

        A layer that was already changed counts as matched; skipped layers do not.
        """
        if self.num_changed or self.already_applied:
            return
        detail = f" Skipped: {str(self).split('; skipped ', 1)[1]}." if self.skipped else ""
        warnings.warn(
            f"{trick_name} matched no layer: the model is unchanged.{detail} Check the layer "
            "types, `include`/`exclude` patterns and classifier exclusion.",
            TrickWarning,
            stacklevel=2,
        )

    def update_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Point ``optimizer`` at the replaced and added parameters of this surgery."""
        update_optimizer_params(optimizer, self.replaced_parameters, self.added_parameters)


def class_name(module: nn.Module) -> str:
    """The class name of ``module`` as the user wrote it (parametrize's wrapper class unwrapped)."""
    return parametrize.type_before_parametrizations(module).__name__


def update_optimizer_params(
    optimizer: torch.optim.Optimizer,
    replaced: Mapping[Tensor, Tensor],
    added: Mapping[Tensor, Sequence[Tensor]] | None = None,
) -> None:
    """Point an already-built ``optimizer`` at parameters that a surgery replaced or added.

    Every ``old`` parameter of a param group is swapped for ``replaced[old]`` (its optimizer state
    moves along when the shapes agree, and is dropped otherwise); every parameter listed in
    ``added[anchor]`` joins the group holding ``anchor`` (with no state). Parameters the optimizer
    does not hold are ignored; a parameter is never added twice.

    Args:
        optimizer: a ``torch.optim.Optimizer``.
        replaced: ``old -> new`` parameter objects (``SurgerySummary.replaced_parameters``).
        added: ``anchor -> new parameters`` (``SurgerySummary.added_parameters``).
    """
    by_id = {id(old): new for old, new in replaced.items()}
    added_by_id = {id(anchor): list(new) for anchor, new in (added or {}).items()}
    present = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for group in optimizer.param_groups:
        params: list[Tensor] = []
        for old in group["params"]:
            new = by_id.get(id(old), old)
            if new is not old:
                state = optimizer.state.pop(old, None)
                if state is not None and new.shape == old.shape:
                    optimizer.state[new] = state
            params.append(new)
            for extra in added_by_id.get(id(old), ()):
                if id(extra) not in present:
                    params.append(extra)
                    present.add(id(extra))
        group["params"] = params
