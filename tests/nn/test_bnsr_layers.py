"""BNSR layers: exact BatchNorm at the identity warp, skewness reduction, eval mode, edge cases."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import scipy.stats
import torch
from timm.layers import BatchNormAct2d
from torch import nn

from lightning_dnn_tricks.nn import BNSR1d, BNSR2d, BNSRAct2d, IdentityWarp, YeoJohnsonWarp

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
