"""Norm Loss maths against autograd and hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from lightning_dnn_tricks.functional import (
    add_norm_loss_grad_,
    mean_abs_norm_deviation,
    norm_loss,
    row_norms,
)


def _weights(dtype: torch.dtype = torch.float64) -> list[torch.nn.Parameter]:
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 3, 3, 3), (16, 8), (5, 4, 7), (8, 3, 3, 3)]
    return [
        torch.nn.Parameter(torch.randn(shape, generator=generator, dtype=dtype) * 0.4)
        for shape in shapes
    ]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_gradient_matches_autograd_in_float64(reduction: str) -> None:
    strength = 0.37
    weights = _weights()
    reference = [w.detach().clone().requires_grad_(True) for w in weights]
    (strength * norm_loss(reference, reduction=reduction)).backward()  # type: ignore[arg-type]

    existing = [torch.randn_like(w) for w in weights]
    for w, g in zip(weights, existing, strict=True):
        w.grad = g.clone()
    add_norm_loss_grad_(weights, strength, reduction=reduction)  # type: ignore[arg-type]

    for w, r, g in zip(weights, reference, existing, strict=True):
        assert r.grad is not None and w.grad is not None
        torch.testing.assert_close(w.grad - g, r.grad, atol=1e-6, rtol=0)


def test_hand_computed_loss_and_gradient() -> None:
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0], [0.6, 0.8]]))
    assert norm_loss([w]).item() == pytest.approx(8.0)
    assert norm_loss([w], reduction="sum").item() == pytest.approx(16.0)
    add_norm_loss_grad_([w], strength=1.0)
    # row 0: (2 / 2) * (5 - 1) * [3, 4] / 5; row 1 sits on the unit sphere: zero gradient
    torch.testing.assert_close(w.grad, torch.tensor([[2.4, 3.2], [0.0, 0.0]]))


def test_returns_row_norms_for_logging() -> None:
    weights = _weights(torch.float32)
    norms = add_norm_loss_grad_(weights, 0.1)
    expected = torch.cat([w.detach().flatten(1).norm(dim=1) for w in weights])
    torch.testing.assert_close(norms, expected)


def test_zero_rows_give_finite_zero_gradient() -> None:
    w = torch.nn.Parameter(torch.zeros(4, 3, 3, 3))
    w.data[0] = 1.0
    add_norm_loss_grad_([w], strength=1.0)
    assert w.grad is not None
    assert torch.isfinite(w.grad).all()
    assert torch.count_nonzero(w.grad[1:]) == 0
    assert torch.isfinite(norm_loss([w]))


def test_missing_grad_gets_the_norm_loss_gradient_alone() -> None:
    w = torch.nn.Parameter(torch.full((2, 2), 2.0))
    assert w.grad is None
    add_norm_loss_grad_([w], strength=1.0)
    assert w.grad is not None and torch.all(w.grad > 0)


def test_channels_last_weight_updates_its_own_grad() -> None:
    base = _weights(torch.float32)[0]
    w = torch.nn.Parameter(base.detach().to(memory_format=torch.channels_last))
    w.grad = torch.zeros_like(w)
    reference = base.detach().clone().requires_grad_(True)
    norm_loss([reference]).backward()
    add_norm_loss_grad_([w], strength=1.0)
    torch.testing.assert_close(w.grad, reference.grad)


def test_bf16_weights_stay_finite() -> None:
    w = torch.nn.Parameter(torch.randn(8, 4, dtype=torch.bfloat16))
    add_norm_loss_grad_([w], strength=1e-2)
    assert w.grad is not None and w.grad.dtype == torch.bfloat16
    assert torch.isfinite(w.grad.float()).all()


def test_empty_selection_is_a_no_op() -> None:
    assert add_norm_loss_grad_([], strength=1.0).numel() == 0
    assert norm_loss([]).item() == 0.0


def test_rejects_vectors_and_bad_reduction() -> None:
    with pytest.raises(ValueError, match="dim >= 2"):
        row_norms([torch.ones(3)])
    with pytest.raises(ValueError, match="`reduction`"):
        norm_loss([torch.ones(2, 2)], reduction="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`reduction`"):
        add_norm_loss_grad_([torch.ones(2, 2)], 1.0, reduction="max")  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(0, 4), (4, 0), (0, 3, 3, 3), (3, 0, 3, 3)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_empty_weights_contribute_zero_with_finite_gradients(
    shape: tuple[int, ...], reduction: str
) -> None:
    """A weight without entries used to give a NaN loss (0 rows) or a ZeroDivisionError."""
    empty = torch.nn.Parameter(torch.zeros(shape))
    other = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))
    loss = norm_loss([empty, other], reduction=reduction)  # type: ignore[arg-type]
    assert loss.item() == pytest.approx(16.0)  # (1 - 5)^2 from `other` alone
    loss.backward()
    assert empty.grad is not None and torch.isfinite(empty.grad).all()
    assert norm_loss([empty]).item() == 0.0
    empty.grad, other.grad = None, None
    norms = add_norm_loss_grad_([empty, other], 1.0, reduction=reduction)  # type: ignore[arg-type]
    torch.testing.assert_close(norms, torch.tensor([5.0]))
    assert empty.grad is None  # left alone
    torch.testing.assert_close(other.grad, torch.tensor([[2 * 4 * 0.6, 2 * 4 * 0.8]]))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_huge_rows_get_the_float64_gradient(reduction: str) -> None:
    """Rows of 1e20 overflow float32's squares: the gradient used to be NaN."""
    w = torch.nn.Parameter(torch.tensor([[1e20, -2e20, 3e20], [0.3, 0.4, 0.0], [1e-3, 0.0, 0.0]]))
    w.grad = torch.ones_like(w)
    reference = w.detach().double().requires_grad_(True)
    (0.1 * norm_loss([reference], reduction=reduction)).backward()  # type: ignore[arg-type]
    add_norm_loss_grad_([w], 0.1, reduction=reduction)  # type: ignore[arg-type]
    assert w.grad is not None and torch.isfinite(w.grad).all()
    assert reference.grad is not None
    torch.testing.assert_close(w.grad.double() - 1.0, reference.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"strength": -1.0}, "strength"),  # would ascend the Norm Loss
        ({"strength": float("nan")}, "strength"),
        ({"strength": float("inf")}, "strength"),
        ({"strength": 10**400}, "strength"),
        ({"strength": True}, "strength"),
        ({"strength": "0.1"}, "strength"),
        ({"reduction": "max"}, "reduction"),
        ({"reduction": 1}, "reduction"),
        ({"weights": torch.ones(2, 2)}, "weights"),
        ({"weights": [torch.ones(2, 2), "w"]}, "weights"),
        ({"weights": None}, "weights"),
    ],
)
def test_add_norm_loss_grad_bad_arguments_name_the_argument(
    kwargs: dict[str, object], argument: str
) -> None:
    w = torch.nn.Parameter(torch.ones(2, 2))
    arguments: dict[str, object] = {"weights": [w], "strength": 0.1, **kwargs}
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        add_norm_loss_grad_(**arguments)  # type: ignore[arg-type]
    assert w.grad is None  # nothing was added before the refusal


def test_other_functions_refuse_wrong_types() -> None:
    with pytest.raises(TypeError, match="`weights`"):
        norm_loss(torch.ones(2, 2))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`weights`"):
        row_norms((torch.ones(2, 2), 3))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`norms`"):
        mean_abs_norm_deviation([1.0])  # type: ignore[arg-type]
    assert add_norm_loss_grad_([torch.nn.Parameter(torch.ones(2, 2))], 0.0).numel() == 2
