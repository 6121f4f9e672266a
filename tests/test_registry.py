"""The trick registry and the capability declarations."""

from __future__ import annotations

import pytest

from lightning_dnn_tricks import Capabilities, TrickSpec, get_trick, list_tricks
from lightning_dnn_tricks.registry import register_trick


def test_listing_and_lookup() -> None:
    names = [spec.name for spec in list_tricks()]
    assert names == sorted(names) and "norm_loss" in names
    spec = get_trick("norm_loss")
    assert spec.load().__name__ == "NormLoss"
    assert [s.name for s in list_tricks(kind="optimizer")] == [
        s.name for s in list_tricks() if s.kind == "optimizer"
    ]


def test_unknown_trick_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="norm_loss"):
        get_trick("no_such_trick")


def test_registration_is_idempotent_and_refuses_conflicts() -> None:
    spec = get_trick("norm_loss")
    assert register_trick(spec) is spec
    conflicting = TrickSpec(
        name="norm_loss", kind="callback", import_path="x:Y", summary="other", paper="other"
    )
    with pytest.raises(ValueError, match="already registered"):
        register_trick(conflicting)


def test_capabilities_row_has_every_column() -> None:
    row = Capabilities(needs_closure=True, max_optimizers=1, precisions=("32-true",)).as_row()
    assert row["closure"] == "required"
    assert row["optimizers"] == "<= 1"
    assert row["precision"] == "32-true"
    assert len(row) == 9
