"""Argument checks with messages that name the argument, the allowed range and the value."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any


class TrickWarning(UserWarning):
    """A warning raised by this library (the test suite turns it into an error)."""


class TrickConfigurationError(ValueError):
    """A trick cannot run with this Trainer, module or optimizer configuration."""


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    integer: bool = False,
) -> None:
    """Raise ``ValueError`` unless ``value`` is a finite number inside the given interval."""
    kind = "an integer" if integer else "a number"
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not is_number or (integer and not isinstance(value, int)) or not _finite(value):
        shown = value if not isinstance(value, int) or abs(value) < 10**30 else "a huge integer"
        raise ValueError(f"`{name}` must be {kind} (finite, float64-representable), got {shown!r}.")
    left = "[" if low_inclusive else "("
    right = "]" if high_inclusive else ")"
    interval = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
    too_low = low is not None and (value < low if low_inclusive else value <= low)
    too_high = high is not None and (value > high if high_inclusive else value >= high)
    if too_low or too_high:
        raise ValueError(f"`{name}` must be in {interval}, got {value!r}.")


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def check_bool(name: str, value: Any) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``bool`` (not ``"false"``, not ``0``/``1``)."""
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


def check_text(name: str, value: Any, optional: bool = True) -> None:
    """Raise ``TypeError`` unless ``value`` is a ``str`` (or ``None`` when ``optional``)."""
    if not (isinstance(value, str) or (optional and value is None)):
        allowed = "a string or None" if optional else "a string"
        raise TypeError(f"`{name}` must be {allowed}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Collection[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``, of the same type (``True`` is
    not ``1``; a tensor, whose ``==`` is elementwise, matches nothing)."""
    if not any(type(value) is type(choice) and value == choice for choice in choices):
        allowed = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")
