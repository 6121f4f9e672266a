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


def align_weight(weight: Tensor, gain: Tensor, eps: float = DEFAULT_EPS) -> Tensor:
    """WeightAlign of each row: ``W_hat_i = gain_i * (W_i - mu_i) / (sqrt(N) * sigma_i + eps)``.

    Computed as ``gain_i * c_i / (||c_i|| + eps)`` with ``c_i = W_i - mu_i`` (``||c_i|| = sqrt(N)
    sigma_i``), with a hand-written backward pass: for an upstream gradient ``g_i``::

        dL/dW_i    = s_i (g_i - mean(g_i)) - k_i c_i,   s_i = gain_i / d_i,   d_i = ||c_i|| + eps,
                     k_i = s_i (g_i . c_i) / (||c_i|| d_i)
        dL/dgain_i = (g_i . c_i) / d_i

    with ``g_i . c_i = g_i . W_i - mu_i sum(g_i)``: four passes over the weight forward and
    backward, where autograd needs a dozen. WeightAlign then costs about as much per step as
    timm's ``StdConv2d`` (``F.batch_norm`` over the weight): 1.00x to 1.05x in our runs.

    A row whose spread is at the rounding level of its mean (a zero or constant filter:
    ``||c_i|| <= 4 log2(N) sqrt(N) |mu_i|`` times the machine epsilon of the computation) gives a
    zero row and zero gradients, in every dtype. float16 and bfloat16 weights are aligned in
    float32 and the result (and the gradients) cast back: the cost is one float32 copy of the
    weight, and half precision would overflow (``1 / (||c|| d)``) for any filter with ``||c|| <
    5e-3``.

    Args:
        weight: a tensor of shape ``(C_out, ...)`` (one row per output filter).
        gain: the per-row gains, shape ``(C_out,)``.
        eps: added to ``||c_i||`` (``>= 0``; with ``0`` the denominator is floored at the fourth
            root of the computation dtype's smallest normal number, 3.3e-10 in float32).

    Returns:
        The aligned weight, same shape and dtype as ``weight``.

    Note:
        First-order gradients only: differentiating the backward pass again
        (``create_graph=True``, e.g. for a gradient penalty) raises an error. A filter with
        fan-in ``N = 1`` is always a constant filter (a zero row):
        :func:`~lightning_dnn_tricks.functional.apply_weight_align` skips such layers. A
        filter with ``||c_i||`` below that same floor (3.3e-10 in float32) is kept, with the
        ``k_i c_i`` term of its weight gradient computed from the floor (finite; exact to
        ``||c_i|| / d_i``, negligible when ``eps`` is much larger than the floor).

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
        # float16/bfloat16 weights are aligned in float32 (a copy of the weight, no more): in
        # half precision ``1 / (||c|| d)`` overflows for any filter with ``||c|| < 5e-3``.
        compute = torch.promote_types(weight.dtype, torch.float32)
        flat = weight.reshape(weight.shape[0], -1).to(compute)
        n = flat.shape[1]
        mean = flat.mean(dim=1, keepdim=True)
        aligned = flat - mean  # c: becomes W_hat in place below
        norm = torch.linalg.vector_norm(aligned, dim=1, keepdim=True)  # sqrt(N) * sigma
        rounding = torch.finfo(compute).eps * 4 * max(1.0, math.log2(n)) * math.sqrt(n)
        keep = norm > mean.abs() * rounding
        floor = _floor(compute)
        denominator = norm + eps
        if eps == 0.0:
            denominator = denominator.clamp_min(floor)
        inverse = torch.where(keep, denominator.reciprocal(), 0.0)  # 1 / d_i (0: dropped row)
        scale = inverse * gain.to(compute).unsqueeze(1)
        aligned.mul_(scale)
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # k_i = dot_i * s_i / (||c_i|| d_i): precomputed, so backward runs few small ops.
            # The floor keeps it finite: s_i / d_i <= gain / floor^2, / ||c_i|| <= 1 / floor.
            k_factor = scale * inverse / norm.clamp_min(floor)
            ctx.save_for_backward(flat, mean, scale, inverse, k_factor)
            ctx.dtypes = (weight.dtype, gain.dtype)
        return aligned.view(weight.shape).to(weight.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        flat, mean, scale, inverse, k_factor = ctx.saved_tensors
        weight_dtype, gain_dtype = ctx.dtypes
        flat_grad = grad.reshape(flat.shape).to(flat.dtype)
        grad_sum = flat_grad.sum(dim=1, keepdim=True)
        buffer = flat_grad * flat  # one allocation, reused for the result below
        dot = torch.addcmul(buffer.sum(dim=1, keepdim=True), mean, grad_sum, value=-1.0)  # g . c
        k = k_factor * dot
        # s g - k c - s mean(g) = s g - k W + (k mu - s mean(g))
        row_constant = torch.addcmul(k * mean, scale, grad_sum, value=-1.0 / flat.shape[1])
        grad_weight = torch.addcmul(row_constant, flat_grad, scale, out=buffer)
        grad_weight.addcmul_(flat, k, value=-1.0)
        grad_gain = (dot * inverse).view(-1).to(gain_dtype)
        return grad_weight.view(grad.shape).to(weight_dtype), grad_gain, None


@functools.lru_cache(maxsize=4)
def _floor(dtype: torch.dtype) -> float:
    """The smallest ``||c||`` (and, with ``eps = 0``, denominator) the maths uses in ``dtype``.

    The fourth root of the smallest normal number (3.3e-10 in float32, 1.2e-77 in float64):
    ``gain / floor^3`` is still finite, so the backward pass never overflows.
    """
    return float(torch.finfo(dtype).tiny) ** 0.25


class WeightAlignParametrization(nn.Module):
    """WeightAlign as a ``torch.nn.utils.parametrize`` parametrisation of a weight.

    ``forward(W) = gamma * (W - mu) / (sqrt(N) * sigma + eps)`` per output filter (row) of
    ``W``, with the filter's mean ``mu``, population standard deviation ``sigma`` and fan-in
    ``N``, computed by :func:`align_weight` (a fused forward and backward pass). A filter with
    zero spread (``sigma = 0``: a zero or constant filter, or any filter of fan-in 1) gives a
    zero filter and zero gradients, in float16, bfloat16 (both computed in float32), float32
    and float64.

    Args:
        out_channels: number of filters (rows of the weight); the size of ``gain``.
        gain: initial value of every per-filter gain ``gamma`` (learnable, ``> 0``).
        eps: added to ``sqrt(N) * sigma`` (``>= 0``; with ``0`` the denominator is floored at
            the fourth root of the smallest normal number of the computation dtype).
        device: device of the gain parameter.
        dtype: floating-point dtype of the gain parameter (use the weight's).

    Raises:
        ValueError: ``out_channels``, ``gain``, ``eps``, ``device`` or ``dtype`` is out of
            range or of the wrong type (the message names it).

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
        variance) are our reconstruction (method card): the paper's structure, our constants.
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
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(
                f"`dtype` must be a floating-point torch.dtype or None, got {dtype!r}."
            )
        if device is not None:
            try:
                device = torch.device(device)
            except (RuntimeError, TypeError):
                raise ValueError(
                    f"`device` must be a torch.device, a device string or None, got {device!r}."
                ) from None
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
    """Whether ``module.weight`` carries a :class:`WeightAlignParametrization`.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
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
