"""WeightAlign maths against an independent per-filter computation and timm's StdConv2d."""

from __future__ import annotations

import math

import pytest
import torch
from timm.layers import ScaledStdConv2d, StdConv2d
from torch import nn
from torch.nn.utils import parametrize

from lightning_dnn_tricks.nn import WeightAlignParametrization, is_weight_aligned
from lightning_dnn_tricks.nn.weight_align import align_weight


def reference_align(weight: torch.Tensor, gamma: torch.Tensor, eps: float) -> torch.Tensor:
    """``gamma_i (W_i - mu_i) / (sqrt(N) sigma_i + eps)`` one filter at a time, from sums."""
    rows = []
    for i in range(weight.shape[0]):
        row = weight[i].reshape(-1)
        n = row.numel()
        mu = row.sum() / n
        sigma = torch.sqrt(((row - mu) ** 2).sum() / n)
        rows.append(gamma[i] * (row - mu) / (math.sqrt(n) * sigma + eps))
    return torch.stack(rows).reshape(weight.shape)


SHAPES = [(8, 3, 3, 3), (6, 1, 3, 3), (5, 4, 7), (4, 10)]  # conv2d, depthwise, conv1d, linear


@pytest.mark.parametrize("shape", SHAPES)
def test_filters_have_zero_mean_and_norm_gamma(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(shape, generator=generator, dtype=torch.float64) * 0.3 + 0.2
    align = WeightAlignParametrization(shape[0], gain=1.7, eps=0.0, dtype=torch.float64)
    with torch.no_grad():
        align.gain.uniform_(0.5, 2.0, generator=generator)
    aligned = align(weight).reshape(shape[0], -1)
    torch.testing.assert_close(aligned.mean(1), torch.zeros(shape[0], dtype=torch.float64))
    torch.testing.assert_close(aligned.norm(dim=1), align.gain.detach())
    reference = reference_align(weight, align.gain.detach(), eps=1e-3)
    align.eps = 1e-3
    torch.testing.assert_close(align(weight), reference, rtol=1e-12, atol=1e-12)


def test_default_gain_is_sqrt2_and_keeps_the_filter_norm_near_it() -> None:
    conv = nn.Conv2d(16, 32, 3)
    parametrize.register_parametrization(conv, "weight", WeightAlignParametrization(32))
    assert torch.equal(conv.parametrizations.weight[0].gain, torch.full((32,), math.sqrt(2)))
    norms = conv.weight.detach().flatten(1).norm(dim=1)
    assert torch.all((norms - math.sqrt(2)).abs() < 1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equals_timm_stdconv2d_when_the_gain_is_sqrt_fan_in(dtype: torch.dtype) -> None:
    # StdConv2d computes (W - mu) / sqrt(var + eps_s) with F.batch_norm over the weight.
    # WeightAlign with gamma = sqrt(N) gives sqrt(N) (W - mu) / (sqrt(N) sigma + eps)
    # = (W - mu) / (sigma + eps / sqrt(N)). The eps terms enter differently (inside the square
    # root vs added to sigma), so no single pair of eps values makes them equal for every filter.
    # Both are exactly (W - mu) / sigma at eps = 0, but F.batch_norm refuses eps = 0 in training:
    # StdConv2d gets eps_s = 1e-12, a relative change of eps_s / (2 sigma^2) ~ 1e-10 here
    # (sigma ~ 0.1), and WeightAlign eps = 0. In float64 they agree to that relative 1e-10.
    torch.manual_seed(0)
    std_conv = StdConv2d(6, 10, 3, padding=1, groups=2, bias=True, eps=1e-12).to(dtype)
    conv = nn.Conv2d(6, 10, 3, padding=1, groups=2, bias=True).to(dtype)
    conv.load_state_dict(std_conv.state_dict())
    sigma = conv.weight.detach().flatten(1).std(dim=1, correction=0)
    assert sigma.min() > 0.05  # so eps_s / (2 sigma^2) < 1e-9
    fan_in = 3 * 3 * 3  # C_in / groups * k * k
    parametrize.register_parametrization(
        conv,
        "weight",
        WeightAlignParametrization(10, gain=math.sqrt(fan_in), eps=0.0, dtype=dtype),
    )
    x = torch.randn(4, 6, 12, 12, dtype=dtype)
    torch.testing.assert_close(conv(x), std_conv(x), rtol=0, atol=1e-5)
    if dtype == torch.float64:
        torch.testing.assert_close(conv(x), std_conv(x), rtol=1e-9, atol=1e-10)


def test_gradients_reach_raw_weight_and_gain_like_autograd_of_the_reference() -> None:
    generator = torch.Generator().manual_seed(1)
    raw = torch.randn(5, 2, 3, 3, generator=generator, dtype=torch.float64, requires_grad=True)
    align = WeightAlignParametrization(5, gain=1.3, eps=1e-2, dtype=torch.float64)
    upstream = torch.randn(5, 2, 3, 3, generator=generator, dtype=torch.float64)
    (align(raw) * upstream).sum().backward()

    raw_ref = raw.detach().clone().requires_grad_(True)
    gain_ref = torch.full((5,), 1.3, dtype=torch.float64, requires_grad=True)
    (reference_align(raw_ref, gain_ref, eps=1e-2) * upstream).sum().backward()
    assert raw.grad is not None and align.gain.grad is not None
    torch.testing.assert_close(raw.grad, raw_ref.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(align.gain.grad, gain_ref.grad, rtol=1e-10, atol=1e-12)
    assert raw.grad.abs().sum() > 0 and align.gain.grad.abs().sum() > 0


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_constant_and_depthwise_filters_stay_finite(eps: float) -> None:
    depthwise = nn.Conv2d(4, 4, 3, groups=4, bias=False)
    with torch.no_grad():
        depthwise.weight[0] = 0.7  # constant filter: sigma = 0
        depthwise.weight[1] = 0.0  # zero filter
    parametrize.register_parametrization(
        depthwise, "weight", WeightAlignParametrization(4, eps=eps)
    )
    x = torch.randn(2, 4, 5, 5)
    out = depthwise(x)
    out.square().sum().backward()
    raw = depthwise.parametrizations.weight.original
    assert torch.isfinite(out).all() and torch.isfinite(raw.grad).all()  # type: ignore[arg-type]
    assert torch.equal(depthwise.weight[:2], torch.zeros(2, 1, 3, 3))
    flat = depthwise.weight.detach().flatten(1)[2:]  # N = 9 for a depthwise 3x3 conv
    torch.testing.assert_close(flat.norm(dim=1), torch.full((2,), math.sqrt(2)), atol=1e-3, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"out_channels": 0}, "out_channels"),
        ({"out_channels": 2.5}, "out_channels"),
        ({"gain": 0.0}, "gain"),
        ({"gain": float("inf")}, "gain"),
        ({"eps": -1e-3}, "eps"),
        ({"eps": "small"}, "eps"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], argument: str) -> None:
    arguments: dict[str, object] = {"out_channels": 3, **kwargs}
    with pytest.raises(ValueError, match=f"`{argument}`"):
        WeightAlignParametrization(**arguments)  # type: ignore[arg-type]


def test_no_grad_forward_equals_grad_forward_and_second_order_raises() -> None:
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    gain = torch.full((4,), 1.5, requires_grad=True)
    with torch.no_grad():
        inference = align_weight(weight, gain, 1e-5)
    training = align_weight(weight, gain, 1e-5)
    torch.testing.assert_close(inference, training, rtol=0, atol=0)
    (grad,) = torch.autograd.grad(training.square().sum(), weight, create_graph=True)
    with pytest.raises(RuntimeError, match=r"once_differentiable|differentiate"):
        grad.sum().backward()


def _degenerate_weight(dtype: torch.dtype) -> torch.Tensor:
    """A depthwise 3x3 weight: a zero filter, a constant filter, then ordinary filters."""
    generator = torch.Generator().manual_seed(3)
    weight = torch.randn(6, 1, 3, 3, generator=generator) * 0.2
    weight[0] = 0.0
    weight[1] = 0.7
    return weight.to(dtype)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_zero_and_constant_filters_are_finite_zero_in_every_dtype(
    dtype: torch.dtype, eps: float
) -> None:
    """float16 used to give NaN weight gradients here (``1e-30`` rounds to 0 in half precision)."""
    weight = _degenerate_weight(dtype).requires_grad_(True)
    gain = torch.full((6,), math.sqrt(2), dtype=dtype, requires_grad=True)
    upstream = torch.randn(6, 1, 3, 3, generator=torch.Generator().manual_seed(4)).to(dtype)
    aligned = align_weight(weight, gain, eps)
    (aligned * upstream).sum().backward()
    assert aligned.dtype == dtype and weight.grad is not None and gain.grad is not None
    assert weight.grad.dtype == dtype and gain.grad.dtype == dtype
    assert torch.isfinite(aligned).all()
    assert torch.isfinite(weight.grad).all() and torch.isfinite(gain.grad).all()
    assert torch.count_nonzero(aligned[:2]) == 0  # zero and constant filters: a zero row
    assert torch.count_nonzero(weight.grad[:2]) == 0 and torch.count_nonzero(gain.grad[:2]) == 0

    # The ordinary filters against float64 autograd of the per-filter reference.
    raw = weight.detach().double().requires_grad_(True)
    gain64 = gain.detach().double().requires_grad_(True)
    reference = reference_align(raw[2:], gain64[2:], eps)
    (reference * upstream.double()[2:]).sum().backward()
    low_precision = dtype != torch.float32
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if low_precision else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(aligned[2:].double(), reference, **tolerance)
    torch.testing.assert_close(weight.grad[2:].double(), raw.grad[2:], **tolerance)
    torch.testing.assert_close(gain.grad[2:].double(), gain64.grad[2:], **tolerance)


def test_float16_matches_timm_scaled_std_conv2d() -> None:
    """With ``gain = sqrt(2)`` WeightAlign is timm's ``ScaledStdConv2d`` weight (METHODS §7)."""
    scaled = ScaledStdConv2d(6, 6, 3, groups=6, bias=False, gamma=math.sqrt(2), eps=1e-12)
    with torch.no_grad():
        scaled.weight.copy_(_degenerate_weight(torch.float32))
        scaled.weight[1] = 0.0  # timm leaves rounding noise on a constant filter: compare zeros
    x = torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(5))
    expected = scaled(x).detach()
    ours = align_weight(scaled.weight.detach().half(), torch.full((6,), 2**0.5).half(), 0.0)
    assert ours.dtype == torch.float16 and torch.isfinite(ours).all()
    assert torch.count_nonzero(ours[:2]) == 0
    got = nn.functional.conv2d(x, ours.float(), padding=1, groups=6)
    torch.testing.assert_close(got, expected, rtol=1e-2, atol=1e-2)


def test_tiny_filters_keep_finite_gradients() -> None:
    """A filter far below eps (norm 1e-35) and one at the eps = 0 floor stay finite."""
    weight = torch.zeros(3, 4)
    weight[0, :2] = torch.tensor([1e-35, -1e-35])
    weight[1, :2] = torch.tensor([1e-12, -1e-12])
    weight[2] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    for eps in (0.0, 1e-5):
        raw = weight.clone().requires_grad_(True)
        gain = torch.full((3,), 1.5, requires_grad=True)
        aligned = align_weight(raw, gain, eps)
        (aligned * torch.arange(12.0).view(3, 4)).sum().backward()
        assert torch.isfinite(aligned).all() and torch.isfinite(raw.grad).all()  # type: ignore[arg-type]
        assert torch.isfinite(gain.grad).all()  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "argument", "error"),
    [
        ({"out_channels": True}, "out_channels", ValueError),
        ({"out_channels": float("nan")}, "out_channels", ValueError),
        ({"gain": True}, "gain", ValueError),
        ({"gain": float("nan")}, "gain", ValueError),
        ({"gain": "big"}, "gain", ValueError),
        ({"eps": float("inf")}, "eps", ValueError),
        ({"eps": False}, "eps", ValueError),
        ({"dtype": torch.int64}, "dtype", ValueError),
        ({"dtype": "float32"}, "dtype", ValueError),
        ({"device": "no-such-device"}, "device", ValueError),
        ({"device": 1.5}, "device", ValueError),
    ],
)
def test_more_bad_arguments_name_the_argument(
    kwargs: dict[str, object], argument: str, error: type[Exception]
) -> None:
    arguments: dict[str, object] = {"out_channels": 3, **kwargs}
    with pytest.raises(error, match=f"`{argument}`"):
        WeightAlignParametrization(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("argument", ["out_channels", "gain", "eps"])
def test_huge_integers_name_the_argument(argument: str) -> None:
    arguments: dict[str, object] = {"out_channels": 3, argument: 10**400}
    with pytest.raises(ValueError, match=f"`{argument}`"):
        WeightAlignParametrization(**arguments)  # type: ignore[arg-type]


def test_is_weight_aligned_refuses_a_non_module() -> None:
    with pytest.raises(TypeError, match="`module`"):
        is_weight_aligned("conv")  # type: ignore[arg-type]


def test_default_gain_is_timms_scaled_std_conv2d_in_float32() -> None:
    """The identity the card states: WeightAlign at gain sqrt(2) computes the weight of
    ``ScaledStdConv2d(gamma=sqrt(2))`` with its gain at 1 (both without eps)."""
    from lightning_dnn_tricks.functional import apply_weight_align

    generator = torch.Generator().manual_seed(0)
    scaled = ScaledStdConv2d(4, 6, 3, padding=1, bias=True, gamma=math.sqrt(2), eps=1e-12)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=True)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(6, 4, 3, 3, generator=generator))
        conv.bias.copy_(torch.randn(6, generator=generator))
        scaled.weight.copy_(conv.weight)
        scaled.bias.copy_(conv.bias)
    model = nn.Sequential(conv)
    apply_weight_align(model, eps=0.0)
    x = torch.randn(2, 4, 7, 7, generator=generator)
    torch.testing.assert_close(model(x), scaled(x), rtol=1e-5, atol=1e-5)
