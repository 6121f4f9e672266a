"""Module surgery: replacement, parametrisation, idempotence, summaries and optimizer updates."""

from __future__ import annotations

import pytest
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from lightning_dnn_tricks import TrickWarning
from lightning_dnn_tricks.nn import (
    LayerSelection,
    SurgerySummary,
    applied_tags,
    register_parametrization_on,
    replace_modules,
    share_state,
    update_optimizer_params,
)


class Scale(nn.Module):
    """A parametrisation with one learnable gain per output row."""

    def __init__(self, rows: int) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.full((rows,), 2.0))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.gain.view(-1, *([1] * (weight.dim() - 1)))


class TaggedBatchNormAct(BatchNormAct2d):
    """A BatchNormAct2d subclass standing in for a replacement that keeps the fused activation."""


def _to_tagged(module: nn.Module) -> nn.Module:
    assert isinstance(module, BatchNormAct2d)
    new = TaggedBatchNormAct(module.num_features, apply_act=False)
    return share_state(module, new)


def _fused_model() -> nn.Sequential:
    torch.manual_seed(0)
    norm = BatchNormAct2d(4, act_layer=nn.ReLU6)
    return nn.Sequential(nn.Conv2d(3, 4, 3), norm, nn.Conv2d(4, 2, 1))


def test_replacement_keeps_state_fused_activation_mode_and_dtype() -> None:
    model = _fused_model().double().eval()
    x = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)  # non-trivial running statistics
        expected = model(x)
    old_weight = model[1].weight
    summary = replace_modules(model, LayerSelection(types=(BatchNormAct2d,)), _to_tagged, tag="t")
    assert isinstance(model[1], TaggedBatchNormAct)
    assert model[1].weight is old_weight and not model[1].training
    assert model[1].weight.dtype == torch.float64
    assert isinstance(model[1].act, nn.ReLU6)
    assert summary.changed == {"BatchNormAct2d": 1} and summary.changed_names == ["1"]
    assert summary.replaced_parameters == {} and summary.added_parameters == {}
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
    assert "t" in applied_tags(model[1])


def test_replacement_is_idempotent_and_counts_already_applied() -> None:
    model = _fused_model()
    select = LayerSelection(types=(nn.BatchNorm2d,))
    replace_modules(model, select, _to_tagged, tag="t")
    replaced = model[1]
    again = replace_modules(model, select, _to_tagged, tag="t")
    assert model[1] is replaced
    assert again.num_changed == 0 and again.already_applied == ["1"]
    assert "1 already applied" in str(again)


def test_predicate_selection_skip_reasons_and_shared_modules() -> None:
    shared = nn.Linear(3, 3)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Linear(3, 2))
    summary = replace_modules(
        model,
        lambda name, module: isinstance(module, nn.Linear),
        lambda module: nn.Linear(3, module.out_features, bias=False),
        tag="nobias",
        skip=lambda name, module: "the head" if name == "3" else None,
    )
    assert model[0] is model[2] and model[0] is not shared and model[0].bias is None
    assert model[3].bias is not None
    assert summary.num_changed == 1
    assert [(s.name, s.type_name, s.reason) for s in summary.skipped] == [
        ("3", "Linear", "the head")
    ]
    assert shared.weight in summary.replaced_parameters
    assert "skipped 1 (1 x Linear: the head)" in str(summary)


def test_build_must_return_a_module() -> None:
    with pytest.raises(TypeError, match="build"):
        replace_modules(nn.Sequential(nn.Linear(2, 2)), LayerSelection(), lambda m: 3)  # type: ignore[arg-type,return-value]


def test_empty_surgery_warns_with_the_skip_reasons() -> None:
    summary = SurgerySummary(tag="x")
    summary.skip("conv", nn.Conv2d(1, 1, 1), "already standardised")
    with pytest.warns(TrickWarning, match="MyTrick matched no layer.*already standardised"):
        summary.warn_if_empty("MyTrick")
    summary.already_applied.append("conv")
    summary.warn_if_empty("MyTrick")  # matched (earlier): no warning


def test_parametrization_is_idempotent_and_reports_new_parameters() -> None:
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten(), nn.Linear(3, 2), nn.BatchNorm1d(2))
    weight = model[0].weight
    summary = register_parametrization_on(
        model,
        LayerSelection(types=(nn.Conv2d, nn.Linear, nn.BatchNorm1d)),
        lambda m: Scale(m.weight.shape[0]) if m.weight.dim() > 1 else nn.Identity(),
    )
    assert summary.changed == {"Conv2d": 1, "Linear": 1, "BatchNorm1d": 1}
    assert model[0].parametrizations.weight.original is weight
    assert [p.shape for p in summary.added_parameters[weight]] == [torch.Size([3])]
    torch.testing.assert_close(model[0].weight, 2 * weight)
    again = register_parametrization_on(model, LayerSelection(), lambda m: Scale(2))
    assert again.num_changed == 0 and sorted(again.already_applied) == ["0", "2"]
    assert str(again) == "Scale: changed 0 layers; 2 already applied"
    skipped = register_parametrization_on(
        model, LayerSelection(types=(nn.Flatten,)), lambda m: Scale(1)
    )
    assert skipped.skipped[0].reason == "has no `weight` tensor"


def test_update_optimizer_after_replacement_and_parametrization() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters()}, {"params": model[1].parameters(), "lr": 0.5}],
        lr=0.1,
        momentum=0.9,
    )
    model(torch.randn(5, 3)).sum().backward()
    optimizer.step()
    old_bias = model[0].bias
    momentum = optimizer.state[old_bias]["momentum_buffer"].clone()

    def rebuild(module: nn.Module) -> nn.Module:
        new = nn.Linear(3, 4)
        new.load_state_dict(module.state_dict())
        return new

    replaced = replace_modules(model, LayerSelection(include="^0$"), rebuild, tag="r")
    added = register_parametrization_on(model, LayerSelection(include="^1$"), lambda m: Scale(2))
    update_optimizer_params(optimizer, replaced.replaced_parameters)
    added.update_optimizer(optimizer)
    update_optimizer_params(optimizer, {}, added.added_parameters)  # adding twice is a no-op

    groups = [list(group["params"]) for group in optimizer.param_groups]
    assert groups[0][0] is model[0].weight and groups[0][1] is model[0].bias
    gain = model[1].parametrizations.weight[0].gain
    assert len(groups[1]) == 3 and sum(p is gain for p in groups[1]) == 1
    torch.testing.assert_close(optimizer.state[model[0].bias]["momentum_buffer"], momentum)
    assert old_bias not in optimizer.state
    optimizer.zero_grad()
    model(torch.randn(5, 3)).sum().backward()
    before = gain.detach().clone()
    optimizer.step()
    assert not torch.equal(before, gain)
