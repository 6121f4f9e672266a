"""BNSR maths against independent references (scipy, autograd), and apply/remove_bnsr."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from lightning_dnn_tricks import TrickWarning
from lightning_dnn_tricks.functional import apply_bnsr, remove_bnsr, yeo_johnson
from lightning_dnn_tricks.functional.bnsr import (
    LAM_HIGH,
    LAM_LOW,
    LOG_GAP,
    batch_skewness,
    clip_exponent,
    newton_exponent,
    skewness_warp,
    yeo_johnson_warp,
)
from lightning_dnn_tricks.nn import BNSR1d, BNSR2d, BNSRAct2d, IdentityWarp, YeoJohnsonWarp
from lightning_dnn_tricks.nn.bnsr_warps import make_warp


def _standardised_exponential(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    x = torch.empty(*shape, dtype=torch.float64).exponential_(generator=generator)
    dims = (0, *range(2, x.dim()))
    return (x - x.mean(dims, keepdim=True)) / x.std(dims, keepdim=True, correction=0)


@pytest.mark.parametrize("lam", [-1.0, -0.4, 0.0, 0.3, 1.0, 1.7, 2.0, 2.6])
def test_yeo_johnson_matches_scipy(lam: float) -> None:
    x = np.random.default_rng(0).normal(scale=3.0, size=500)
    x[:3] = [0.0, 1e-9, -1e-9]
    ours = yeo_johnson(torch.from_numpy(x), lam).numpy()
    np.testing.assert_allclose(ours, scipy.stats.yeojohnson(x, lmbda=lam), rtol=1e-12, atol=1e-12)


def test_fast_warp_matches_reference_per_channel() -> None:
    x = torch.randn(64, 5, 3, dtype=torch.float64) * 2
    lam = torch.tensor([-0.7, 0.2, 1.0, 1.5, 2.9], dtype=torch.float64)
    expected = yeo_johnson(x, lam.view(1, -1, 1))
    torch.testing.assert_close(yeo_johnson_warp(x, lam), expected, rtol=1e-12, atol=1e-12)


def test_exponent_is_clipped_and_kept_off_the_logarithmic_points() -> None:
    lam = torch.tensor([-5.0, -1e-4, 0.0, 1e-4, 0.5, 1.0, 1.9995, 2.0, 2.0002, 9.0])
    clipped = clip_exponent(lam)
    assert clipped.min() >= LAM_LOW and clipped.max() <= LAM_HIGH
    assert (clipped.abs() >= LOG_GAP).all() and ((clipped - 2).abs() >= LOG_GAP * 0.999).all()
    assert clipped[4] == 0.5 and clipped[5] == 1.0


def test_batch_skewness_matches_scipy_on_standardised_data() -> None:
    x = _standardised_exponential(400, 3, 2)
    per_channel = x.transpose(0, 1).reshape(3, -1).numpy()
    expected = scipy.stats.skew(per_channel, axis=1)
    np.testing.assert_allclose(batch_skewness(x).numpy(), expected, rtol=1e-10)


def test_gradient_through_the_skewness_matches_finite_differences() -> None:
    torch.manual_seed(0)
    x = torch.randn(7, 3, 2, dtype=torch.float64).exp().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: skewness_warp(z, alpha=0.8)[0], (x,))
    assert torch.autograd.gradcheck(
        lambda z: yeo_johnson_warp(z, torch.tensor([0.3, 1.0, 2.5])), (x,)
    )


def test_exponent_follows_the_skewness_rule() -> None:
    x = _standardised_exponential(2000, 2)
    _, lam = skewness_warp(x, alpha=0.5)
    expected = 1 - 0.5 * torch.tanh(batch_skewness(x))
    torch.testing.assert_close(lam, expected, rtol=1e-12, atol=1e-12)
    assert (lam < 1).all()  # right-skewed channels are compressed on the right
    _, lam_left = skewness_warp(-x, alpha=0.5)
    assert (lam_left > 1).all()


def test_newton_steps_remove_nearly_all_skewness() -> None:
    x = _standardised_exponential(4000, 3)
    start = 1 - torch.tanh(batch_skewness(x))
    for steps, bound in ((0, 0.5), (3, 0.02)):
        lam = newton_exponent(x, start, steps)
        warped = yeo_johnson(x, lam.view(1, -1))
        skew = scipy.stats.skew(warped.T.numpy(), axis=1)
        assert np.abs(skew).max() < bound, (steps, skew)


def test_newton_keeps_constant_channels_finite() -> None:
    x = torch.zeros(16, 2)
    lam = newton_exponent(x, torch.ones(2), 3)
    assert torch.isfinite(lam).all()


def test_make_warp_refuses_arguments_it_would_ignore() -> None:
    assert isinstance(make_warp("identity"), IdentityWarp)
    assert make_warp("yeo_johnson", 0.5, 2) == YeoJohnsonWarp(0.5, 2)
    assert YeoJohnsonWarp(alpha=0.0).is_identity and not YeoJohnsonWarp(0.0, 1).is_identity
    with pytest.raises(ValueError, match="`alpha`"):
        make_warp("identity", alpha=0.5)
    with pytest.raises(ValueError, match="`alpha`"):
        make_warp(YeoJohnsonWarp(), alpha=0.5)
    with pytest.raises(ValueError, match="`warp`"):
        make_warp("box_cox")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`alpha`"):
        YeoJohnsonWarp(alpha=2.5)
    with pytest.raises(ValueError, match="`newton_steps`"):
        YeoJohnsonWarp(newton_steps=-1)


class _Mixed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4))
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), BatchNormAct2d(6))
        self.shared = nn.BatchNorm2d(6)
        self.again = self.shared  # registered twice
        self.sync = nn.SyncBatchNorm(6)
        self.volume = nn.BatchNorm3d(6)
        self.head = nn.Linear(4, 2)


def test_apply_counts_skips_and_is_idempotent() -> None:
    model = _Mixed()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {id(p) for p in model.parameters()}
    summary = apply_bnsr(model)
    assert summary.changed == {"BatchNorm1d": 1, "BatchNorm2d": 2, "BatchNormAct2d": 1}
    assert {s.type_name for s in summary.skipped} == {"SyncBatchNorm", "BatchNorm3d"}
    assert type(model.stem[1]) is BNSR1d and type(model.body[2]) is BNSRAct2d
    assert model.again is model.shared and type(model.shared) is BNSR2d
    assert {id(p) for p in model.parameters()} == before  # optimizer references stay valid
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == before
    again = apply_bnsr(model)
    assert again.num_changed == 0 and len(again.already_applied) == 4


def test_apply_filters_by_name_and_warns_when_nothing_matched() -> None:
    model = _Mixed()
    summary = apply_bnsr(model, include=r"^body", exclude=r"body\.2")
    assert summary.changed_names == ["body.1"]
    with pytest.warns(TrickWarning, match="matched no layer"):
        apply_bnsr(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    with pytest.raises(ValueError, match="`include`"):
        apply_bnsr(model, include="(")
    with pytest.raises(ValueError, match="`alpha`"):
        apply_bnsr(model, alpha=-1.0)


def test_remove_restores_the_original_classes_and_state() -> None:
    model = _Mixed()
    apply_bnsr(model, alpha=0.7)
    model.train()
    model.body(torch.randn(4, 3, 6, 6))
    running = model.body[1].running_mean.clone()
    summary = remove_bnsr(model)
    assert summary.num_changed == 4
    assert type(model.body[1]) is nn.BatchNorm2d and type(model.body[2]) is BatchNormAct2d
    assert torch.equal(model.body[1].running_mean, running)
    assert not any("running_lam" in key for key in model.state_dict())
    assert apply_bnsr(model).num_changed == 4


def test_empty_batch_warp_is_the_identity_and_finite() -> None:
    """``skewness_warp`` on an empty batch used to raise ZeroDivisionError (with gradients)."""
    empty = torch.zeros(0, 3, 2, requires_grad=True)
    assert torch.equal(batch_skewness(empty), torch.zeros(3))
    warped, lam = skewness_warp(empty, alpha=1.0)
    assert warped.shape == empty.shape and torch.equal(lam, torch.ones(3))
    warped.sum().backward()
    assert torch.equal(newton_exponent(empty.detach(), torch.ones(3), 2), torch.ones(3))
    warped, lam = YeoJohnsonWarp(newton_steps=2).fit(empty)
    assert warped.shape == empty.shape and torch.isfinite(lam).all()


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"alpha": True}, "alpha"),
        ({"alpha": 10**400}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"newton_steps": True}, "newton_steps"),
        ({"newton_steps": 10**400}, "newton_steps"),
        ({"warp": "identity", "alpha": True}, "alpha"),
        ({"warp": IdentityWarp(), "newton_steps": False}, "newton_steps"),
        ({"warp": 3}, "warp"),
        ({"compiled": 1}, "compiled"),
    ],
)
def test_apply_bnsr_bad_arguments_name_the_argument(
    kwargs: dict[str, object], argument: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=f"`{argument}`"):
        apply_bnsr(nn.Sequential(nn.BatchNorm2d(2)), **kwargs)  # type: ignore[arg-type]


def test_surgery_and_yeo_johnson_refuse_wrong_types() -> None:
    for function in (apply_bnsr, remove_bnsr):
        with pytest.raises(TypeError, match="`model`"):
            function("model")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`x`"):
        yeo_johnson([1.0], 0.5)  # type: ignore[arg-type]
    for lam in (float("nan"), float("inf"), True, 10**400):
        with pytest.raises(ValueError, match="`lam`"):
            yeo_johnson(torch.ones(2), lam)
    with pytest.raises(TypeError, match="`lam`"):
        yeo_johnson(torch.ones(2), "0.5")  # type: ignore[arg-type]
