"""The WeightAlign parametrisation (Shi et al., ICPR 2020, arXiv 2010.07160).

For a weight ``W`` of shape ``(C_out, ...)`` with fan-in ``N = W[i].numel()`` (``C_in/groups * k*k``
for a 2d conv, ``in_features`` for a linear layer), per output filter ``i``::

    mu_i    = mean(W_i)                                   (over the N fan-in entries)
    sigma_i = sqrt(mean((W_i - mu_i)^2))                  (population standard deviation)
    W_hat_i = gamma_i * (W_i - mu_i) / (sqrt(N) * sigma_i + eps)

so every aligned filter has zero mean and L2 norm
``gamma_i * sqrt(N) sigma_i / (sqrt(N) sigma_i + eps)`` (``gamma_i`` up to ``eps``). For inputs of
unit variance, uncorrelated, a filter's output has variance ``gamma_i^2``: ``gamma = sqrt(2)`` (the
He gain) keeps the second moment through a ReLU. ``W_hat`` is recomputed in every forward pass,
so gradients flow through ``mu`` and ``sigma`` to the raw weight, and to the learnable gain.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.nn.utils import parametrize

from lightning_dnn_tricks.validation import check_number

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_GAIN",
    "WeightAlignParametrization",
    "align_weight",
    "is_weight_aligned",
    "standardises_weight",
    "weight_align_parametrization",
]

DEFAULT_GAIN = math.sqrt(2.0)
DEFAULT_EPS = 1e-5
_TINY = 1e-30


def align_weight(weight: Tensor, gain: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """WeightAlign of each row: ``W_hat_i = gain_i * (W_i - mu_i) / (sqrt(N) * sigma_i + eps)``.

    Computed as ``gain_i * c_i / (||c_i|| + eps)`` with ``c_i = W_i - mu_i`` (``||c_i|| = sqrt(N)
    sigma_i``), with a hand-written backward pass: for an upstream gradient ``g_i``::

        dL/dW_i    = s_i (g_i - mean(g_i)) - k_i c_i,   s_i = gain_i / d_i,   d_i = ||c_i|| + eps,
                     k_i = s_i (g_i . c_i) / (||c_i|| d_i)
        dL/dgain_i = (g_i . c_i) / d_i

    with ``g_i . c_i = g_i . W_i - mu_i sum(g_i)``: four passes over the weight forward and
    backward, where autograd needs a dozen. WeightAlign then costs less per step than timm's
    ``StdConv2d`` (``F.batch_norm`` over the weight).

    A row whose spread is at the rounding level of its mean (a constant filter: ``||c_i|| <=
    4 log2(N) sqrt(N) |mu_i|`` times the dtype's machine epsilon) gives a zero row and zero
    gradients.

    Args:
        weight: a tensor of shape ``(C_out, ...)`` (one row per output filter).
        gain: the per-row gains, shape ``(C_out,)``.
        eps: added to ``||c_i||`` (``>= 0``; with ``0`` the denominator is floored at the square
            root of the dtype's smallest normal number).

    Returns:
        The aligned weight, same shape and dtype as ``weight``.

    Note:
        First-order gradients only: differentiating the backward pass again
        (``create_graph=True``, e.g. for a gradient penalty) raises an error.

    Examples:
        >>> import torch
        >>> w = torch.tensor([[1.0, 2.0, 3.0, 6.0], [5.0, 5.0, 5.0, 5.0]])
        >>> align_weight(w, torch.tensor([2.0, 2.0]), eps=0.0)  # c = (-2, -1, 0, 3), ||c|| = 14**.5
        tensor([[-1.0690, -0.5345,  0.0000,  1.6036],
                [ 0.0000,  0.0000,  0.0000,  0.0000]])
    """
    return _AlignWeight.apply(weight, gain, eps)


class _AlignWeight(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, weight: Tensor, gain: Tensor, eps: float) -> Tensor:
        flat = weight.reshape(weight.shape[0], -1)
        n = flat.shape[1]
        mean = flat.mean(dim=1, keepdim=True)
        aligned = flat - mean  # c: becomes W_hat in place below
        norm = torch.linalg.vector_norm(aligned, dim=1, keepdim=True)  # sqrt(N) * sigma
        rounding = torch.finfo(flat.dtype).eps * 4 * max(1.0, math.log2(n)) * math.sqrt(n)
        keep = norm > mean.abs() * rounding
        denominator = norm + eps
        if eps == 0.0:
            denominator = denominator.clamp_min(math.sqrt(torch.finfo(norm.dtype).tiny))
        inverse = torch.where(keep, denominator.reciprocal(), 0.0)  # 1 / d_i (0: dropped row)
        scale = inverse * gain.unsqueeze(1)
        aligned.mul_(scale)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # k_i = dot_i * s_i / (||c_i|| d_i): precomputed, so backward runs few small ops.
            k_factor = scale * inverse / norm.clamp_min(_TINY)
            ctx.save_for_backward(flat, mean, scale, inverse, k_factor)
        return aligned.view(weight.shape)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        flat, mean, scale, inverse, k_factor = ctx.saved_tensors
        flat_grad = grad.reshape(flat.shape)
        grad_sum = flat_grad.sum(dim=1, keepdim=True)
        buffer = flat_grad * flat  # one allocation, reused for the result below
        dot = torch.addcmul(buffer.sum(dim=1, keepdim=True), mean, grad_sum, value=-1.0)  # g . c
        k = k_factor * dot
        # s g - k c - s mean(g) = s g - k W + (k mu - s mean(g))
        row_constant = torch.addcmul(k * mean, scale, grad_sum, value=-1.0 / flat.shape[1])
        grad_weight = torch.addcmul(row_constant, flat_grad, scale, out=buffer)
        grad_weight.addcmul_(flat, k, value=-1.0)
        return grad_weight.view(grad.shape), (dot * inverse).view(-1), None


class WeightAlignParametrization(nn.Module):
    """WeightAlign as a ``torch.nn.utils.parametrize`` parametrisation of a weight.

    ``forward(W) = gamma * (W - mu) / (sqrt(N) * sigma + eps)`` per output filter (row) of
    ``W``, with the filter's mean ``mu``, population standard deviation ``sigma`` and fan-in
    ``N``, computed by :func:`align_weight` (a fused forward and backward pass). A filter with
    zero spread (``sigma = 0``) gives a zero filter and finite gradients.

    Args:
        out_channels: number of filters (rows of the weight); the size of ``gain``.
        gain: initial value of every per-filter gain ``gamma`` (learnable, ``> 0``).
        eps: added to ``sqrt(N) * sigma`` (``>= 0``; with ``0`` the denominator is floored at
            the square root of the dtype's smallest normal number).
        device: device of the gain parameter.
        dtype: dtype of the gain parameter (use the weight's).

    Raises:
        ValueError: ``out_channels``, ``gain`` or ``eps`` is out of range (the message names
            it).

    Examples:
        >>> import torch
        >>> from torch.nn.utils import parametrize
        >>> conv = torch.nn.Conv2d(3, 8, 3)
        >>> parametrize.register_parametrization(conv, "weight", WeightAlignParametrization(8))
        ParametrizedConv2d(...)
        >>> w = conv.weight.flatten(1)
        >>> bool(w.mean(1).abs().max() < 1e-6)
        True
        >>> torch.allclose(w.norm(dim=1), torch.full((8,), 2**0.5), atol=1e-3)
        True

    Note:
        The default gain ``sqrt(2)`` and ``eps = 1e-5`` (added to ``sqrt(N) sigma``, not to the
        variance) are our reconstruction (METHODS.md §7): the paper's structure, our constants.
    """

    def __init__(
        self,
        out_channels: int,
        gain: float = DEFAULT_GAIN,
        eps: float = DEFAULT_EPS,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        check_number("out_channels", out_channels, low=1, integer=True)
        check_number("gain", gain, low=0.0, low_inclusive=False)
        check_number("eps", eps, low=0.0)
        self.eps = float(eps)
        self.gain = nn.Parameter(
            torch.full((out_channels,), float(gain), device=device, dtype=dtype)
        )

    def forward(self, weight: Tensor) -> Tensor:
        return align_weight(weight, self.gain, self.eps)

    def extra_repr(self) -> str:
        return f"out_channels={self.gain.numel()}, eps={self.eps}"


def weight_align_parametrization(
    module: nn.Module, gain: float = DEFAULT_GAIN, eps: float = DEFAULT_EPS
) -> WeightAlignParametrization:
    """A :class:`WeightAlignParametrization` sized for ``module.weight`` (its device and dtype).

    The gain of a frozen weight (``requires_grad=False``) is frozen too.
    """
    weight = module.weight
    assert isinstance(weight, Tensor)
    parametrization = WeightAlignParametrization(
        weight.shape[0], gain, eps, device=weight.device, dtype=weight.dtype
    )
    parametrization.gain.requires_grad_(weight.requires_grad)
    return parametrization


def is_weight_aligned(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries a :class:`WeightAlignParametrization`."""
    if not parametrize.is_parametrized(module, "weight"):
        return False
    chain = module.parametrizations["weight"]  # type: ignore[index]
    return any(isinstance(p, WeightAlignParametrization) for p in chain)


@functools.lru_cache(maxsize=1)
def _standardising_types() -> tuple[type[nn.Module], ...]:
    try:
        from timm.layers import ScaledStdConv2d, ScaledStdConv2dSame, StdConv2d, StdConv2dSame
    except ImportError:  # pragma: no cover - timm is a dependency, but nn/ must not need it
        return ()
    return (StdConv2d, StdConv2dSame, ScaledStdConv2d, ScaledStdConv2dSame)


def standardises_weight(module: nn.Module) -> bool:
    """Whether ``module`` already standardises its weight (timm ``StdConv2d``, ``ScaledStdConv2d``,
    their ``*Same`` variants and subclasses)."""
    return isinstance(module, _standardising_types())
