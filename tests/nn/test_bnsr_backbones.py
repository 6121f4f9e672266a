"""BNSR on every backbone of the conformance matrix; BatchNorm layers are counted independently."""

from __future__ import annotations

import copy

import pytest
import torch
from conformance.backbones import BACKBONES, random_batches
from torch import nn

from lightning_dnn_tricks import TrickWarning
from lightning_dnn_tricks.functional import apply_bnsr


def _batch_norm_layers(model: nn.Module) -> dict[str, type[nn.Module]]:
    """Layer name -> class of every module that owns a ``running_mean`` (BatchNorm's statistic)."""
    owners = {key.rsplit(".", 1)[0] for key in model.state_dict() if key.endswith(".running_mean")}
    return {name: type(module) for name, module in model.named_modules() if name in owners}


def _first_batch(backbone: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = next(iter(random_batches(backbone)))
    return x, y


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_identity_warp_changes_every_batch_norm_and_keeps_outputs(backbone: str) -> None:
    torch.manual_seed(0)
    model = BACKBONES[backbone][0]()
    layers = _batch_norm_layers(model)
    original = copy.deepcopy(model)
    if not layers:
        with pytest.warns(TrickWarning, match="matched no layer"):
            summary = apply_bnsr(model, warp="identity")
        assert summary.num_changed == 0
        return
    summary = apply_bnsr(model, warp="identity")
    assert summary.num_changed == len(layers) and not summary.skipped
    assert sorted(summary.changed_names) == sorted(layers)
    modules = dict(model.named_modules())
    for name, old_class in layers.items():
        assert isinstance(modules[name], old_class) and type(modules[name]) is not old_class
    x, _ = _first_batch(backbone)
    for train in (True, False):
        model.train(train)
        original.train(train)
        assert torch.equal(model(x), original(x)), f"outputs differ (train={train})"
    changed = dict(model.named_buffers())
    for name, buffer in original.named_buffers():  # running statistics updated identically
        assert torch.equal(changed.pop(name), buffer), name
    assert {name.rsplit(".", 1)[1] for name in changed} == {
        "running_lam",
        "running_warp_mean",
        "running_warp_var",
    }


@pytest.mark.parametrize(
    "backbone",
    [name for name in sorted(BACKBONES) if name in ("resnet18", "mobilenetv3_small_050")],
)
def test_default_warp_trains_on_batch_norm_backbones(backbone: str) -> None:
    torch.manual_seed(0)
    model = BACKBONES[backbone][0]()
    summary = apply_bnsr(model)
    assert summary.num_changed == len(_batch_norm_layers(model))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    for x, y in random_batches(backbone):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    lam = [m.running_lam for m in model.modules() if hasattr(m, "running_lam")]
    assert lam and all(torch.isfinite(t).all() for t in lam)
    assert any(not torch.equal(t, torch.ones_like(t)) for t in lam)
    model.eval()
    assert torch.isfinite(model(_first_batch(backbone)[0])).all()
