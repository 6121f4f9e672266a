"""BNSR layers: exact BatchNorm at the identity warp, skewness reduction, eval mode, edge cases."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import scipy.stats
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from lightning_dnn_tricks.functional import yeo_johnson
from lightning_dnn_tricks.nn import (
    BNSR1d,
    BNSR2d,
    BNSRAct2d,
    IdentityWarp,
    YeoJohnsonWarp,
    bnsr_class_for,
)

# (BatchNorm layer, its BNSR class, an input shape)
LAYERS: dict[str, tuple[Callable[..., nn.Module], type[nn.Module], tuple[int, ...]]] = {
    "1d-flat": (nn.BatchNorm1d, BNSR1d, (16, 3)),
    "1d-seq": (nn.BatchNorm1d, BNSR1d, (8, 3, 5)),
    "2d": (nn.BatchNorm2d, BNSR2d, (6, 3, 4, 4)),
    "act2d": (lambda c, **kw: BatchNormAct2d(c, act_layer="silu", **kw), BNSRAct2d, (6, 3, 4, 4)),
}


def _skewed(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return 2.0 + 3.0 * torch.empty(shape).exponential_(generator=generator)


def _abs_skewness(out: torch.Tensor) -> torch.Tensor:
    per_channel = out.detach().transpose(0, 1).reshape(out.shape[1], -1).double()
    return torch.from_numpy(abs(scipy.stats.skew(per_channel.numpy(), axis=1)))


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("warp", [IdentityWarp(), YeoJohnsonWarp(alpha=0.0)], ids=["id", "a0"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_identity_warp_is_exactly_batch_norm(
    layer: str, warp: IdentityWarp | YeoJohnsonWarp, momentum: float | None
) -> None:
    make, bnsr_class, shape = LAYERS[layer]
    torch.manual_seed(0)
    reference = make(shape[1], momentum=momentum)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    layer_bnsr = bnsr_class.from_module(copy.deepcopy(reference), warp=warp)  # type: ignore[attr-defined]
    for step in range(4):
        x = _skewed(shape, seed=step)
        assert torch.equal(layer_bnsr(x), reference(x))
    for name, buffer in reference.named_buffers():
        assert torch.equal(buffer, layer_bnsr.get_buffer(name)), name
    assert int(layer_bnsr.num_batches_tracked) == 4
    layer_bnsr.eval()
    reference.eval()
    x = _skewed(shape, seed=9)
    assert torch.equal(layer_bnsr(x), reference(x))


def test_output_skewness_is_at_most_half_of_batch_norm() -> None:
    x = _skewed((256, 8, 6, 6))
    bn_skew = _abs_skewness(nn.BatchNorm2d(8)(x)).mean()
    bnsr_skew = _abs_skewness(BNSR2d(8)(x)).mean()
    newton_skew = _abs_skewness(BNSR2d(8, warp=YeoJohnsonWarp(newton_steps=2))(x)).mean()
    assert bn_skew > 1.5
    assert bnsr_skew <= 0.5 * bn_skew
    assert newton_skew <= 0.05 * bn_skew
    left = _abs_skewness(BNSR2d(8)(-x)).mean()  # left-skewed channels too
    assert left <= 0.5 * bn_skew


def test_output_is_standardised_then_affine() -> None:
    layer = BNSR2d(4)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 0.5, 3.0]))
        layer.bias.copy_(torch.tensor([0.0, -1.0, 1.0, 2.0]))
    out = layer(_skewed((64, 4, 3, 3))).transpose(0, 1).reshape(4, -1)
    torch.testing.assert_close(out.mean(1), layer.bias.detach(), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(1, correction=0), layer.weight.detach(), atol=1e-3, rtol=0)


def test_eval_is_deterministic_and_close_to_training_on_a_large_batch() -> None:
    layer = BNSR2d(5, momentum=None)
    x = _skewed((512, 5, 4, 4))
    for _ in range(3):
        train_out = layer(x)
    layer.eval()
    first, second = layer(x), layer(x[:7])
    assert torch.equal(first[:7], second)  # no dependence on the rest of the batch
    torch.testing.assert_close(first, train_out, atol=2e-3, rtol=0)
    assert (layer.running_lam < 1).all()


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_constant_channels_and_gradients_stay_finite(layer: str) -> None:
    make, bnsr_class, shape = LAYERS[layer]
    module = bnsr_class.from_module(make(shape[1]))  # type: ignore[attr-defined]
    x = _skewed(shape)
    x[:, 1] = 3.7
    x.requires_grad_()
    out = module(x)
    out.square().sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()  # type: ignore[arg-type]
    module.eval()
    assert torch.isfinite(module(x)).all()


def test_gradcheck_in_float64_train_and_eval() -> None:
    torch.manual_seed(0)
    layer = BNSR2d(2, affine=True).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 2, 2, 2, dtype=torch.float64).exp().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: layer(z), (x,))
    layer.eval()
    assert torch.autograd.gradcheck(lambda z: layer(z), (x,))


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_from_module_shares_state_and_keeps_class_mode_dtype(layer: str) -> None:
    make, bnsr_class, _ = LAYERS[layer]
    old = make(3).double().eval()
    new = bnsr_class.from_module(old)  # type: ignore[attr-defined]
    assert isinstance(new, type(old)) and not new.training
    assert new.weight is old.weight and new.running_var is old.running_var
    assert new.running_lam.dtype == torch.float64 and new.weight.dtype == torch.float64
    if isinstance(old, BatchNormAct2d):
        assert new.act is old.act and new.drop is old.drop
    with pytest.raises(TypeError, match="from_module expects"):
        bnsr_class.from_module(nn.LayerNorm(3))  # type: ignore[attr-defined]


def test_fused_activation_and_dropout_still_apply() -> None:
    layer = BNSRAct2d.from_module(BatchNormAct2d(3, act_layer="relu", drop_layer=nn.Dropout))
    out = layer(_skewed((8, 3, 4, 4)))
    assert (out >= 0).all() and (out == 0).any()


def test_bf16_autocast_keeps_float32_statistics() -> None:
    layer = BNSR2d(4)
    x = _skewed((32, 4, 3, 3)).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert layer.running_lam.dtype == torch.float32 and (layer.running_lam < 1).all()
    reference = BNSR2d(4)(x.float())
    torch.testing.assert_close(out.float(), reference, atol=0.05, rtol=0.05)


def test_no_running_statistics_and_no_affine() -> None:
    layer = BNSR2d(3, track_running_stats=False, affine=False)
    x = _skewed((16, 3, 2, 2))
    train_out = layer(x)
    layer.eval()
    assert torch.equal(layer(x), train_out)  # batch statistics in both modes, like BatchNorm
    assert layer.running_lam is None and "running_lam" not in layer.state_dict()


def test_loads_a_batch_norm_state_dict_with_neutral_warp_statistics() -> None:
    trained = nn.BatchNorm2d(3)
    trained(_skewed((8, 3, 2, 2)))
    layer = BNSR2d(3)
    layer.running_lam.fill_(0.5)
    layer.load_state_dict(trained.state_dict())
    assert torch.equal(layer.running_mean, trained.running_mean)
    assert torch.equal(layer.running_lam, torch.full((3,), 0.5))


def test_compiled_layer_computes_the_same_as_eager() -> None:
    """``compiled=True`` fuses the same maths: outputs, gradients and every buffer agree."""
    torch.manual_seed(0)
    eager = BNSRAct2d.from_module(BatchNormAct2d(6, act_layer="silu"))
    compiled = BNSRAct2d.from_module(copy.deepcopy(BatchNormAct2d(6, act_layer="silu")), None, True)
    compiled.load_state_dict(eager.state_dict())
    assert "compiled=True" in repr(compiled)
    for step in range(3):
        x = torch.randn(16, 6, 5, 5).exp().requires_grad_()
        grad = torch.randn(16, 6, 5, 5)
        outputs = []
        for layer in (eager, compiled):
            x.grad = None
            out = layer(x)
            (out * grad).sum().backward()
            outputs.append((out, x.grad, layer.weight.grad))
        for reference, got in zip(*outputs, strict=True):
            torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-5, msg=f"step {step}")
    for name, buffer in eager.named_buffers():
        torch.testing.assert_close(compiled.get_buffer(name), buffer, rtol=1e-5, atol=1e-6)
    x = torch.randn(8, 6, 5, 5).exp()
    torch.testing.assert_close(compiled.eval()(x), eager.eval()(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="`compiled`"):
        BNSR2d(4, compiled=1)  # type: ignore[arg-type]


def _autograd_bnsr(x: torch.Tensor, alpha: float, eps: float) -> torch.Tensor:
    """BNSR's training-mode forward written with plain differentiable ops (no custom backward)."""
    dims = (0, *range(2, x.dim()))
    x_hat = (x - x.mean(dims, keepdim=True)) / torch.sqrt(
        x.var(dims, correction=0, keepdim=True) + eps
    )
    lam = 1.0 - alpha * torch.tanh(x_hat.pow(3).mean(dims, keepdim=True))
    y = yeo_johnson(x_hat, lam)
    return (y - y.mean(dims, keepdim=True)) / torch.sqrt(
        y.var(dims, correction=0, keepdim=True) + eps
    )


def test_float16_model_has_finite_gradients_matching_float64_autograd() -> None:
    """A model cast to float16 used to give NaN input gradients (overflow in half precision)."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 2, generator=generator).exp()  # lognormal: strongly right-skewed
    upstream = 100.0 * torch.randn(4096, 2, generator=generator)
    layer = BNSR1d(2).half()
    half_x = x.half().requires_grad_(True)
    out = layer(half_x)
    (out * upstream.half()).sum().backward()
    assert out.dtype == torch.float16 and half_x.grad is not None
    assert half_x.grad.dtype == torch.float16 and layer.running_lam.dtype == torch.float16
    assert torch.isfinite(out).all() and torch.isfinite(half_x.grad).all()

    reference_x = half_x.detach().double().requires_grad_(True)
    reference = _autograd_bnsr(reference_x, alpha=1.0, eps=layer.eps)
    (reference * upstream.double()).sum().backward()
    assert reference_x.grad is not None
    scale = reference_x.grad.abs().max().item()
    torch.testing.assert_close(out.double(), reference, rtol=0, atol=1e-2)
    torch.testing.assert_close(half_x.grad.double(), reference_x.grad, rtol=0, atol=1e-2 * scale)
    float_layer = BNSR1d(2)
    float_layer(half_x.detach().float())
    for name in ("running_mean", "running_var", "running_lam", "running_warp_mean"):
        torch.testing.assert_close(
            layer.get_buffer(name).float(), float_layer.get_buffer(name), rtol=2e-3, atol=2e-3
        )


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_empty_batch_gives_an_empty_output_and_keeps_the_statistics(
    layer: str, momentum: float | None
) -> None:
    """An empty batch used to raise ZeroDivisionError (and NaN running_lam without gradients)."""
    make, bnsr_class, shape = LAYERS[layer]
    reference = make(shape[1], momentum=momentum)
    module = bnsr_class.from_module(copy.deepcopy(reference))  # type: ignore[attr-defined]
    module(_skewed(shape))  # some statistics to keep
    reference(_skewed(shape))
    before = {name: b.clone() for name, b in module.named_buffers()}
    empty = torch.zeros(0, *shape[1:], requires_grad=True)
    out = module(empty)
    expected = reference(empty)
    assert out.shape == expected.shape == empty.shape
    out.sum().backward()
    assert empty.grad is not None and empty.grad.shape == empty.shape
    for name, buffer in module.named_buffers():
        if name == "num_batches_tracked":  # counted, as BatchNorm counts it
            assert int(buffer) == int(reference.num_batches_tracked) == 2
        else:
            assert torch.equal(buffer, before[name]), name
    module.eval()
    assert module(empty.detach()).shape == empty.shape


@pytest.mark.parametrize(
    ("kwargs", "argument", "error"),
    [
        ({"num_features": 0}, "num_features", ValueError),
        ({"num_features": 2.5}, "num_features", ValueError),
        ({"num_features": True}, "num_features", ValueError),
        ({"num_features": 10**400}, "num_features", ValueError),
        ({"eps": 0.0}, "eps", ValueError),
        ({"eps": float("nan")}, "eps", ValueError),
        ({"momentum": 1.5}, "momentum", ValueError),
        ({"momentum": float("inf")}, "momentum", ValueError),
        ({"momentum": "0.1"}, "momentum", ValueError),
        ({"affine": "yes"}, "affine", TypeError),
        ({"track_running_stats": 1}, "track_running_stats", TypeError),
        ({"no_such_argument": 1}, "no_such_argument", TypeError),
        ({"compiled": "no"}, "compiled", ValueError),
        ({"warp": "yeo_johnson"}, "warp", TypeError),
    ],
)
def test_constructor_arguments_name_the_argument(
    kwargs: dict[str, object], argument: str, error: type[Exception]
) -> None:
    arguments: dict[str, object] = {"num_features": 3, **kwargs}
    for bnsr_class in (BNSR1d, BNSR2d, BNSRAct2d):
        with pytest.raises(error, match=f"`?{argument}`?"):
            bnsr_class(**arguments)  # type: ignore[arg-type]


def test_bnsr_class_for_refuses_a_non_module() -> None:
    assert bnsr_class_for(nn.BatchNorm2d(2)) is BNSR2d and bnsr_class_for(nn.ReLU()) is None
    with pytest.raises(TypeError, match="`module`"):
        bnsr_class_for("BatchNorm2d")  # type: ignore[arg-type]
