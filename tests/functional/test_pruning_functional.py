"""Magnitude masks and their enforcement, checked against independent references."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from lightning_dnn_tricks.functional.pruning import (
    apply_masks_everywhere_,
    as_multipliers,
    magnitude_masks,
    make_permanent,
    mask_gradients_,
    mask_jaccard,
    sparsity_report,
    target_sparsity,
)


def _weights(seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = [(8, 3, 3, 3), (16, 8), (5, 16), (7,)]
    return [torch.randn(*shape, generator=generator) * (i + 1) for i, shape in enumerate(shapes)]


def _reference_global(weights: list[torch.Tensor], keep: int) -> list[np.ndarray]:
    """Independent top-k: NumPy's sort of all magnitudes, keep those >= the k-th largest."""
    flat = np.concatenate([w.numpy().ravel() for w in weights])
    threshold = np.sort(np.abs(flat))[::-1][keep - 1]
    return [np.abs(w.numpy()) >= threshold for w in weights]


@pytest.mark.parametrize("amount", [0.2, 0.5, 0.9])
def test_global_masks_keep_the_largest_magnitudes(amount: float) -> None:
    weights = _weights()
    total = sum(w.numel() for w in weights)
    masks = magnitude_masks(weights, amount=amount)
    keep = total - int(np.floor(amount * total + 0.5))
    for mask, expected in zip(masks, _reference_global(weights, keep), strict=True):
        np.testing.assert_array_equal(mask.numpy(), expected)
    assert sum(int(m.sum()) for m in masks) == keep


def test_layerwise_masks_prune_each_tensor_alone() -> None:
    weights = _weights(1)
    masks = magnitude_masks(weights, amount=0.25, scope="layerwise")
    for weight, mask in zip(weights, masks, strict=True):
        keep = weight.numel() - int(np.floor(0.25 * weight.numel() + 0.5))
        np.testing.assert_array_equal(mask.numpy(), _reference_global([weight], keep)[0])


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_sparsity_after_r_rounds_is_one_minus_keep_power(scope: str) -> None:
    weights = _weights(2)
    total = sum(w.numel() for w in weights)
    masks = None
    for r in range(1, 11):
        new = magnitude_masks(
            weights, sparsity=target_sparsity([0.2] * r), masks=masks, scope=scope
        )  # type: ignore[arg-type]
        if masks is not None:  # masks only lose entries
            assert all(not (n & ~m).any() for n, m in zip(new, masks, strict=True))
        masks = new
        pruned = total - sum(int(m.sum()) for m in masks)
        slack = 1 if scope == "global" else len(weights)  # one weight of rounding (per tensor)
        assert abs(pruned - (1 - 0.8**r) * total) <= slack


def test_amount_is_a_fraction_of_the_survivors_and_pruned_weights_stay_pruned() -> None:
    weights = _weights(3)
    first = magnitude_masks(weights, amount=0.5)
    # The pruned weights keep large values here: they must still rank below every survivor.
    big = [w + 100.0 * (~m) for w, m in zip(weights, first, strict=True)]
    second = magnitude_masks(big, amount=0.5, masks=first)
    survivors = sum(int(m.sum()) for m in first)
    assert sum(int(m.sum()) for m in second) == survivors - int(np.floor(0.5 * survivors + 0.5))
    assert all(not (s & ~f).any() for s, f in zip(second, first, strict=True))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"amount": 0.1, "sparsity": 0.1}, "exactly one"),
        ({"amount": 1.5}, "`amount`"),
        ({"sparsity": -0.1}, "`sparsity`"),
        ({"amount": 0.1, "scope": "row"}, "`scope`"),
        ({"amount": 0.1, "masks": [torch.ones(2, dtype=torch.bool)]}, "masks"),
    ],
)
def test_bad_arguments_raise(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        magnitude_masks(_weights(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    ],
)
def test_masked_weights_and_optimizer_state_stay_exactly_zero(make_optimizer: object) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    params = [model[0].weight, model[2].weight]
    optimizer = make_optimizer(model.parameters())  # type: ignore[operator]
    x, y = torch.randn(32, 6), torch.randint(0, 3, (32,))
    for step in range(12):
        if step == 4:  # prune after momentum has built up
            masks = as_multipliers(magnitude_masks(params, amount=0.6), params)
            apply_masks_everywhere_(params, masks, [optimizer])
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if step >= 4:
            mask_gradients_(params, masks)
        optimizer.step()
        if step >= 4:
            # Masked gradients and the state cleared at pruning time already keep them at zero
            # (the momentum built up before pruning would move them otherwise).
            for param, mask in zip(params, masks, strict=True):
                assert torch.all(param[mask == 0] == 0)
                for value in optimizer.state[param].values():
                    if value.shape == param.shape:
                        assert torch.all(value[mask == 0] == 0)
            apply_masks_everywhere_(params, masks, [optimizer])
    # the survivors did train
    assert sparsity_report({"a": params[0], "b": params[1]}).sparsity == pytest.approx(
        0.6, abs=0.01
    )


def test_make_permanent_removes_torch_pruning_and_loads_into_a_fresh_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
    fresh = copy.deepcopy(model)
    prune.global_unstructured(
        [(model[0], "weight"), (model[2], "weight")],
        pruning_method=prune.L1Unstructured,
        amount=0.5,
    )
    x = torch.randn(4, 6)
    expected = model(x)
    make_permanent(model)
    state = model.state_dict()
    assert set(state) == set(fresh.state_dict())  # no weight_orig / weight_mask left
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh(x), expected, rtol=0, atol=0)
    assert sparsity_report({"a": fresh[0].weight, "b": fresh[2].weight}).sparsity == 0.5


def test_make_permanent_applies_named_masks_and_rejects_unknown_names() -> None:
    model = nn.Linear(4, 2)
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    make_permanent(model, {"weight": mask})
    assert torch.equal(model.weight != 0, mask)
    with pytest.raises(KeyError, match="nope"):
        make_permanent(model, {"nope": mask})


def test_sparsity_report_and_jaccard_on_hand_cases() -> None:
    report = sparsity_report({"a": torch.tensor([[0.0, 2.0], [0.0, 0.0]]), "b": torch.ones(4)})
    assert report.layers == {"a": (3, 4), "b": (0, 4)}
    assert report.sparsity == 3 / 8
    a = [torch.tensor([True, True, False, False])]
    b = [torch.tensor([True, False, True, False])]
    assert mask_jaccard(a, b) == pytest.approx(1 / 3)
    assert mask_jaccard(a, a) == 1.0
