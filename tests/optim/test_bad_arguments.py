"""Every argument of the optimizers and of ``optim``'s public functions refuses bad values.

NaN, infinities, integers too large for a float (``10**400``), bools passed for numbers, wrong
types and unknown options raise ``ValueError`` or ``TypeError`` whose message names the argument
(DESIGN.md, "Bad input"); nothing is accepted silently.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from lightning_dnn_tricks.optim import (
    SGDG2,
    SRK2,
    FrankWolfe,
    create_optimizer,
    factory,
    list_optimizers,
    optimizer_class,
    param_groups_weight_decay,
    preserve_buffers,
    register_optimizer,
)
from lightning_dnn_tricks.optim.factory import OptimizerEntry

NAN, INF, HUGE = float("nan"), float("inf"), 10**400
#: bad values of every real-valued argument (each case also gets the argument's own range)
NOT_A_NUMBER = [NAN, INF, -INF, HUGE, True, "0.1", None, [0.1], torch.tensor(0.1)]


@pytest.fixture(autouse=True)
def _registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A case accepted by mistake must not leave a name in the registry for the other tests."""
    monkeypatch.setattr(factory, "_OPTIMIZERS", dict(factory._OPTIMIZERS))
    monkeypatch.setattr(factory, "_ALIASES", dict(factory._ALIASES))


def _params() -> list[nn.Parameter]:
    return list(nn.Linear(3, 2).parameters())


def _numbers(argument: str, *out_of_range: Any, optional: bool = False) -> list[tuple[str, Any]]:
    values = [v for v in NOT_A_NUMBER if not (optional and v is None)] + list(out_of_range)
    return [(argument, v) for v in values]


BAD_PARAMS = [
    5,
    nn.Parameter(torch.zeros(2)),
    [],
    ["w"],
    [{"lr": 0.1}],
    [nn.Parameter(torch.zeros(2)) * 2],
]

FRANK_WOLFE = [
    *_numbers("lr", 0.0, -1.0),
    *_numbers("inner_steps", 0, -1, 2.5, 3.0),
    *_numbers("radius", 0.0, -1e-3, optional=True),
    *_numbers("tiny", 0.0, -1.0),
    ("trajectory", "curved"),
    ("trajectory", 1),
    ("trajectory", None),
    ("trajectory", ["official"]),
    ("base_optimizer", "torch.optim.Nope"),
    ("base_optimizer", ""),
    ("base_optimizer", int),
    ("base_optimizer", 1),
    ("base_optimizer", None),
    ("base_kwargs", [1]),
    ("base_kwargs", "momentum"),
    ("base_kwargs", {"lr": 0.1}),
    ("base_kwargs", {"momentum_typo": 0.9}),
    ("base_kwargs", {1: 0.9}),
    ("base_kwargs", {"weight_decay": NAN}),
    ("base_kwargs", {"weight_decay": INF}),
    ("base_kwargs", {"weight_decay": HUGE}),
    ("base_kwargs", {"weight_decay": True}),
    ("base_kwargs", {"betas": (NAN, 0.999)}),
    ("base_kwargs", {"betas": (0.9, True)}),
    ("base_kwargs", {"eps": "small"}),
    ("base_kwargs", {"amsgrad": "yes"}),
    ("base_kwargs", {"maximize": 1}),
    *[("params", v) for v in BAD_PARAMS],
]
SGD_G2 = [
    *_numbers("lr", 0.0, -1.0),
    *_numbers("beta", 1.0, -0.1),
    *_numbers("h_min", 0.0, -1.0),
    *_numbers("h_max", 0.0, -1.0, 1e-3, optional=True),  # 1e-3 < lr
    *_numbers("weight_decay", -1e-4),
    *_numbers("tiny", 0.0, -1.0),
    ("mode", "rk4"),
    ("mode", 2),
    ("mode", None),
    ("mode", ("g2",)),
    *[("params", v) for v in BAD_PARAMS],
]
SRK_2 = [
    *_numbers("lr", 0.0, -1.0),
    *_numbers("weight_decay", -1.0),
    ("beta", 0.9),  # not an argument of SRK2: Python names it
    *[("params", v) for v in BAD_PARAMS],
]


def _constructor(cls: type[torch.optim.Optimizer], defaults: dict[str, Any]) -> Callable[..., Any]:
    def build(**kwargs: Any) -> Any:
        arguments = {"params": _params(), **defaults, **kwargs}
        return cls(**arguments)

    return build


def _function_cases() -> list[tuple[str, Callable[..., Any], str, Any]]:
    model = nn.Linear(3, 2)
    cases: list[tuple[str, Callable[..., Any], str, Any]] = []
    for value in [5, "sgdg2", nn.Parameter(torch.zeros(2)), None]:
        cases.append(
            ("create_optimizer", lambda v: create_optimizer(v, "sgdg2"), "model_or_params", value)
        )
    for value in ["", "sgd-g3", 1, None]:
        cases.append(("create_optimizer", lambda v: create_optimizer(model, v), "name", value))
    for value in [*NOT_A_NUMBER, -1.0]:
        cases.append(
            (
                "create_optimizer",
                lambda v: create_optimizer(model, "sgdg2", weight_decay=v),
                "weight_decay",
                value,
            )
        )
        cases.append(
            (
                "create_optimizer",
                lambda v: create_optimizer(model, "adamw", weight_decay=v),
                "weight_decay",
                value,
            )
        )
    for value in ["bias", 1, [1], ["("]]:
        cases.append(
            (
                "create_optimizer",
                lambda v: create_optimizer(model, "sgdg2", no_weight_decay=v),
                "no_weight_decay",
                value,
            )
        )
    for value in [NAN, INF, HUGE, True, "0.1", -1.0]:
        cases.append(
            ("create_optimizer", lambda v: create_optimizer(model, "sgdg2", lr=v), "lr", value)
        )
        cases.append(
            ("create_optimizer", lambda v: create_optimizer(model, "adamw", lr=v), "lr", value)
        )
    for value in [NAN, INF, HUGE]:
        cases.append(
            ("create_optimizer", lambda v: create_optimizer(model, "adamw", eps=v), "eps", value)
        )
    cases.append(
        ("create_optimizer", lambda v: create_optimizer(model, "sgdg2", betaa=v), "betaa", 0.9)
    )
    for value in ["yes", 1, None, 0.0]:
        cases.append(
            (
                "list_optimizers",
                lambda v: list_optimizers(include_aliases=v),
                "include_aliases",
                value,
            )
        )
    for value in [1, None, "", "nope", ["sgdg2"]]:
        cases.append(("optimizer_class", optimizer_class, "name", value))
    for value in [5, None, "model", [nn.Parameter(torch.zeros(1))]]:
        cases.append(
            (
                "param_groups_weight_decay",
                lambda v: param_groups_weight_decay(v, 0.1),
                "model",
                value,
            )
        )
    for value in [*NOT_A_NUMBER, -1.0]:
        cases.append(
            (
                "param_groups_weight_decay",
                lambda v: param_groups_weight_decay(model, v),
                "weight_decay",
                value,
            )
        )
    for value in ["bias", 1, [1], ["("]]:
        cases.append(
            (
                "param_groups_weight_decay",
                lambda v: param_groups_weight_decay(model, 0.1, v),
                "no_weight_decay",
                value,
            )
        )
    for value in [5, None, torch.zeros(2), "model"]:
        cases.append(("preserve_buffers", preserve_buffers, "module", value))
    for value in [5, None, ("name", SGDG2, "d"), OptimizerEntry("sgdg2", SRK2, "other class")]:
        cases.append(("register_optimizer", register_optimizer, "entry", value))
    entry = OptimizerEntry("my_sgdg2", SGDG2, "a copy")
    for value in ["fw2", 1, [1], ["sgdg2"], ["fw"], [""]]:
        cases.append(
            ("register_optimizer", lambda v: register_optimizer(entry, aliases=v), "aliases", value)
        )
    for field, value in [("name", ""), ("name", 1), ("cls", 5), ("description", 3)]:
        fields = {"name": "x", "cls": SGDG2, "description": "d", field: value}
        cases.append(("OptimizerEntry", lambda v: OptimizerEntry(**v), field, fields))
    return cases


CLASS_CASES = [
    *[("FrankWolfe", _constructor(FrankWolfe, {"lr": 1e-3}), arg, v) for arg, v in FRANK_WOLFE],
    *[("SGDG2", _constructor(SGDG2, {"lr": 1e-2}), arg, v) for arg, v in SGD_G2],
    *[("SRK2", _constructor(SRK2, {"lr": 1e-2}), arg, v) for arg, v in SRK_2],
]
FUNCTION_CASES = _function_cases()


def _id(case: tuple[str, Any, str, Any]) -> str:
    value = case[3]
    shown = f"{type(value).__name__}-huge" if value is HUGE else repr(value)[:30]
    return f"{case[0]}-{case[2]}-{shown}"


@pytest.mark.parametrize("case", CLASS_CASES, ids=_id)
def test_optimizer_argument_refused_naming_it(case: tuple[str, Any, str, Any]) -> None:
    _, build, argument, value = case
    with pytest.raises((ValueError, TypeError)) as raised:
        build(**{argument: value})
    assert argument in str(raised.value), str(raised.value)


#: the same values set in a param group (not ``params`` and the constructor-only arguments)
GROUP_CASES = [
    case
    for case in CLASS_CASES
    if case[2] not in ("params", "base_optimizer", "base_kwargs")
    and (case[0], case[2]) != ("SRK2", "beta")
]


@pytest.mark.parametrize("case", GROUP_CASES, ids=_id)
def test_param_group_value_refused_naming_it(case: tuple[str, Any, str, Any]) -> None:
    """``add_param_group`` refuses them before the group is added."""
    _, build, argument, value = case
    optimizer = build()
    with pytest.raises((ValueError, TypeError)) as raised:
        optimizer.add_param_group({"params": _params(), argument: value})
    assert argument in str(raised.value), str(raised.value)
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize("case", FUNCTION_CASES, ids=_id)
def test_function_argument_refused_naming_it(case: tuple[str, Any, str, Any]) -> None:
    _, call, argument, value = case
    with pytest.raises((ValueError, TypeError)) as raised:
        call(value)
    assert argument in str(raised.value), str(raised.value)


def test_good_values_are_accepted() -> None:
    """The checks do not refuse what is valid (the cases above differ from these by one value)."""
    FrankWolfe(_params(), lr=1, inner_steps=1, radius=None, base_kwargs={"betas": (0.9, 0.99)})
    FrankWolfe(_params(), base_optimizer="torch.optim.SGD", base_kwargs={"nesterov": False})
    FrankWolfe(_params(), base_kwargs={"amsgrad": True, "foreach": None, "weight_decay": 0})
    FrankWolfe([("w", nn.Parameter(torch.zeros(2)))])  # named parameters, as torch accepts
    SGDG2(_params(), lr=1, h_max=None, weight_decay=0)
    SRK2([{"params": _params(), "lr": 0.5}])
    create_optimizer(nn.Linear(3, 2), "adamw", lr=1e-3, weight_decay=0.01, no_weight_decay=["w"])
    create_optimizer(nn.Linear(3, 2), "adamw", lr=0, betas=(0.9, 0.99), foreach=False)
    assert list_optimizers(include_aliases=False) == ["frank_wolfe", "sgdg2", "srk2"]
    assert optimizer_class("FW") is FrankWolfe
    register_optimizer(OptimizerEntry("sgdg2", SGDG2, "SGD-G2"))  # the same class again
    register_optimizer(OptimizerEntry("my_sgdg2", SGDG2, "a copy"), aliases=["g2"])
    assert optimizer_class("g2") is SGDG2
    with preserve_buffers(nn.BatchNorm1d(2)):
        pass
