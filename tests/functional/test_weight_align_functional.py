"""apply/remove/fold WeightAlign on torch and timm models, counted independently."""

from __future__ import annotations

import pytest
import torch
from conformance.backbones import BACKBONES
from timm.layers import ScaledStdConv2d, StdConv2d
from torch import nn

from lightning_dnn_tricks import TrickWarning
from lightning_dnn_tricks.functional import (
    apply_weight_align,
    fold_weight_align,
    remove_weight_align,
)
from lightning_dnn_tricks.nn import WeightAlignParametrization, is_weight_aligned


def _classifier(model: nn.Module) -> nn.Module | None:
    timm_model = getattr(model, "model", None)
    if timm_model is not None:
        return timm_model.get_classifier()  # type: ignore[no-any-return]
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def _standardises(module: nn.Module) -> bool:
    names = {cls.__name__ for cls in type(module).__mro__}
    return bool(names & {"StdConv2d", "StdConv2dSame", "ScaledStdConv2d", "ScaledStdConv2dSame"})


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_changes_exactly_the_eligible_layers_of_every_backbone(backbone: str) -> None:
    torch.manual_seed(0)
    model = BACKBONES[backbone][0]()
    classifier = _classifier(model)
    eligible, standardised = 0, 0
    for module in model.modules():  # every Conv1d/Conv2d (subclasses too) but the classifier
        if not isinstance(module, nn.Conv1d | nn.Conv2d) or module is classifier:
            continue
        if _standardises(module):
            standardised += 1
        else:
            eligible += 1
    summary = apply_weight_align(model)
    assert summary.num_changed == eligible
    assert sum(is_weight_aligned(m) for m in model.modules()) == eligible
    assert len(summary.skipped) == standardised
    assert all("standardises" in s.reason for s in summary.skipped)
    if eligible == 0:
        with pytest.warns(TrickWarning, match="matched no layer"):
            summary.warn_if_empty("WeightAlign")
    if backbone == "resnetv2_stdconv_gn":
        assert standardised > 0 and "StdConv2d" in str(summary)
    again = apply_weight_align(model)
    assert again.num_changed == 0 and len(again.already_applied) == eligible


def test_grouped_depthwise_conv1d_and_optional_linear() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 8, 3, groups=2),
        nn.Conv2d(8, 8, 3, groups=8),  # depthwise: N = 9
        nn.Flatten(2),
        nn.Conv1d(8, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 14, 6),
        nn.Linear(6, 3),  # the classifier
    )
    assert apply_weight_align(model).changed == {"Conv2d": 2, "Conv1d": 1}
    summary = apply_weight_align(model, include_linear=True)
    assert summary.changed == {"Linear": 1} and summary.changed_names == ["5"]
    assert apply_weight_align(model, include_linear=True, exclude_classifier=False).num_changed == 1
    out = model(torch.randn(2, 4, 8, 8))
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_include_exclude_patterns_and_skips() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), StdConv2d(4, 4, 3), ScaledStdConv2d(4, 4, 3), nn.Conv2d(4, 4, 1)
    )
    summary = apply_weight_align(model, exclude_classifier=False, exclude="^3$")
    assert summary.changed_names == ["0"]
    assert [s.name for s in summary.skipped] == ["1", "2"]
    assert apply_weight_align(model, include="^3$", exclude_classifier=False).changed_names == ["3"]
    lazy = nn.Sequential(nn.LazyConv2d(4, 3))
    skipped = apply_weight_align(lazy, exclude_classifier=False).skipped
    assert "uninitialised" in skipped[0].reason


def test_fold_gives_identical_eval_outputs_and_leaves_the_model_aligned() -> None:
    torch.manual_seed(0)
    model = BACKBONES["mobilenetv3_small_050"][0]()  # BatchNormAct2d + depthwise convs
    apply_weight_align(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, WeightAlignParametrization):
                module.gain.uniform_(0.5, 2.0)  # trained-looking gains
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    folded = fold_weight_align(model)
    assert not any(is_weight_aligned(m) for m in folded.modules())
    classes = {type(m).__name__ for m in folded.modules()}
    assert "Conv2d" in classes and not any(name.startswith("Parametrized") for name in classes)
    torch.testing.assert_close(folded(x), model(x), rtol=0, atol=0)
    assert any(is_weight_aligned(m) for m in model.modules())  # the original is intact
    assert not any("parametrizations" in key for key in folded.state_dict())


def test_remove_bakes_the_aligned_weight_into_the_same_parameter() -> None:
    conv = nn.Conv2d(3, 5, 3)
    raw = conv.weight
    model = nn.Sequential(conv, nn.ReLU())
    apply_weight_align(model, exclude_classifier=False)
    aligned = model[0].weight.detach().clone()
    summary = remove_weight_align(model)
    assert summary.changed == {"Conv2d": 1}
    assert type(model[0]) is nn.Conv2d and model[0].weight is raw
    assert torch.equal(model[0].weight.detach(), aligned)
    assert remove_weight_align(model).num_changed == 0


def test_an_existing_optimizer_can_be_given_the_gains() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    summary = apply_weight_align(model, exclude_classifier=False)
    summary.update_optimizer(optimizer)
    held = {id(p) for p in optimizer.param_groups[0]["params"]}
    assert all(id(p) in held for p in model.parameters())
    assert len(held) == 6


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"gain": 0.0}, "gain"),
        ({"gain": -1.0}, "gain"),
        ({"gain": float("nan")}, "gain"),
        ({"eps": -1.0}, "eps"),
        ({"layer_types": ()}, "layer_types"),
        ({"layer_types": (int,)}, "layer_types"),
        ({"include": "("}, "include"),
        ({"exclude": "[a-"}, "exclude"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises(ValueError, match=f"`{argument}`"):
        apply_weight_align(nn.Conv2d(1, 1, 1), **kwargs)  # type: ignore[arg-type]


def test_fan_in_one_layers_are_skipped_untouched_with_the_reason() -> None:
    """Centring one weight leaves zero: such a layer used to be aligned into a dead layer."""
    model = nn.Sequential(
        nn.Conv2d(4, 4, 1, groups=4),  # depthwise 1x1: fan-in 1
        nn.Conv2d(4, 4, 3, groups=4),  # depthwise 3x3: fan-in 9, aligned
        nn.Flatten(),
        nn.Linear(1, 3),  # fan-in 1
        nn.Linear(3, 2),
    )
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    summary = apply_weight_align(model, include_linear=True, exclude_classifier=False)
    assert summary.changed_names == ["1", "4"]
    skipped = {s.name: s.reason for s in summary.skipped}
    assert set(skipped) == {"0", "3"}
    assert all("fan-in 1" in reason and "dead" in reason for reason in skipped.values())
    assert "skipped 2" in str(summary) and "fan-in 1" in str(summary)
    for name in ("0", "3"):
        assert not is_weight_aligned(model.get_submodule(name))
        assert type(model.get_submodule(name)) in (nn.Conv2d, nn.Linear)
        assert torch.equal(model.get_submodule(name).weight, before[f"{name}.weight"])
    out = model[0](torch.randn(2, 4, 3, 3))
    out.sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0  # alive
    only = nn.Sequential(nn.Linear(1, 3), nn.ReLU())
    with pytest.warns(TrickWarning, match="fan-in 1"):
        apply_weight_align(only, include_linear=True, exclude_classifier=False).warn_if_empty("WA")
    empty = apply_weight_align(
        nn.Sequential(nn.Linear(0, 2), nn.Linear(2, 0)),
        include_linear=True,
        exclude_classifier=False,
    )
    assert empty.num_changed == 0 and len(empty.skipped) == 2


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"gain": True}, "gain"),
        ({"gain": 10**400}, "gain"),
        ({"eps": float("inf")}, "eps"),
        ({"eps": 10**400}, "eps"),
        ({"layer_types": nn.Conv2d}, "layer_types"),
        ({"layer_types": "Conv2d"}, "layer_types"),
        ({"include_linear": "true"}, "include_linear"),
        ({"include_linear": 1}, "include_linear"),
        ({"exclude_classifier": "false"}, "exclude_classifier"),
        ({"exclude_classifier": None}, "exclude_classifier"),
    ],
)
def test_more_bad_arguments_name_the_argument(kwargs: dict[str, object], argument: str) -> None:
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        apply_weight_align(nn.Conv2d(1, 1, 1), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("function", [apply_weight_align, remove_weight_align, fold_weight_align])
def test_a_non_module_model_is_refused(function: object) -> None:
    with pytest.raises(TypeError, match="`model`"):
        function("model")  # type: ignore[operator]
