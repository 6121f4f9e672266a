"""create_optimizer / list_optimizers: names, timm-style param groups, timm fallback."""

from __future__ import annotations

import pytest
import timm
import timm.optim
import torch

from lightning_dnn_tricks.optim import (
    SGDG2,
    SRK2,
    FrankWolfe,
    create_optimizer,
    list_optimizers,
    param_groups_weight_decay,
)


def test_names_and_aliases() -> None:
    assert list_optimizers() == ["frank_wolfe", "sgdg2", "srk2"]
    assert {"fw", "frankwolfe"} <= set(list_optimizers(include_aliases=True))
    model = torch.nn.Linear(3, 2)
    assert type(create_optimizer(model, "SGDG2", lr=0.1)) is SGDG2
    assert type(create_optimizer(model, "srk2", lr=0.1)) is SRK2
    for name in ("fw", "frankwolfe", "frank_wolfe"):
        assert type(create_optimizer(model, name, lr=1e-3)) is FrankWolfe


def test_no_weight_decay_on_biases_and_norm_parameters() -> None:
    model = timm.create_model("resnet18", num_classes=3)
    opt = create_optimizer(model, "sgdg2", lr=0.1, weight_decay=1e-4)
    no_decay, decay = opt.param_groups
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 1e-4
    assert all(p.ndim <= 1 for p in no_decay["params"]) and all(p.ndim > 1 for p in decay["params"])
    assert len(no_decay["params"]) + len(decay["params"]) == len(list(model.parameters()))
    # Same split as timm's own helper.
    timm_groups = timm.optim.param_groups_weight_decay(model, weight_decay=1e-4)
    ours = param_groups_weight_decay(model, 1e-4)
    by_decay = {g["weight_decay"]: {id(p) for p in g["params"]} for g in timm_groups}
    assert by_decay == {g["weight_decay"]: {id(p) for p in g["params"]} for g in ours}


def test_frank_wolfe_gets_weight_decay_through_its_base() -> None:
    model = torch.nn.Linear(3, 2)
    opt = create_optimizer(model, "fw", lr=1e-3, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    params_only = create_optimizer(list(model.parameters()), "fw", lr=1e-3, weight_decay=0.1)
    assert params_only.base.defaults["weight_decay"] == 0.1  # type: ignore[attr-defined]


def test_other_names_reach_timm() -> None:
    opt = create_optimizer(torch.nn.Linear(3, 2), "lamb", lr=1e-3, weight_decay=0.01)
    assert type(opt).__name__ == "Lamb"


def test_unknown_name_and_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match=r"`name`.*sgdg2"):
        create_optimizer(torch.nn.Linear(3, 2), "sgd-g3")
    with pytest.raises(ValueError, match="`weight_decay`"):
        create_optimizer(torch.nn.Linear(3, 2), "sgdg2", weight_decay=-1.0)
    with pytest.raises(ValueError, match="`inner_steps`"):
        create_optimizer(torch.nn.Linear(3, 2), "fw", inner_steps=0)
