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


class _Tokens(torch.nn.Module):
    """A timm-style model: a 2-d embedding it names in its own ``no_weight_decay()`` set."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = torch.nn.Parameter(torch.zeros(4, 3))
        self.blocks = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 3))
        self.head = torch.nn.Linear(3, 2)
        self.head.weight.requires_grad_(False)  # frozen: in no group

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def _names_by_decay(model: torch.nn.Module, groups: list[dict]) -> dict[float, set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in groups}


def test_param_groups_are_timms_plus_regexes_and_the_models_own_set() -> None:
    model = _Tokens()
    groups = param_groups_weight_decay(model, 0.1, no_weight_decay=[r"blocks\.0\..*"])
    assert _names_by_decay(model, groups) == {
        0.0: {"pos_embed", "blocks.0.weight", "blocks.0.bias", "blocks.1.bias", "head.bias"},
        0.1: {"blocks.1.weight"},
    }
    # Without our additions, the split is exactly timm's helper's.
    plain = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.LayerNorm(3))
    ours = param_groups_weight_decay(plain, 0.1)
    theirs = timm.optim.param_groups_weight_decay(plain, weight_decay=0.1)
    assert _names_by_decay(plain, ours) == _names_by_decay(plain, theirs)
    # Our entries are regexes matched against whole names, not timm's shell-style wildcards.
    groups = param_groups_weight_decay(model, 0.1, no_weight_decay=["blocks", "blocks.1"])
    assert _names_by_decay(model, groups)[0.1] == {"blocks.0.weight", "blocks.1.weight"}
    with pytest.raises(ValueError, match="not a regular expression"):
        param_groups_weight_decay(model, 0.1, no_weight_decay=["*.weight"])


def test_param_groups_leave_out_empty_groups_as_timm_does() -> None:
    no_bias = torch.nn.Linear(3, 2, bias=False)
    assert [g["weight_decay"] for g in param_groups_weight_decay(no_bias, 0.1)] == [0.1]
    everything = param_groups_weight_decay(torch.nn.Linear(3, 2), 0.0)
    assert [(len(g["params"]), g["weight_decay"]) for g in everything] == [(2, 0.0)]
    opt = create_optimizer(no_bias, "sgdg2", lr=0.1, weight_decay=0.1)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1]


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
