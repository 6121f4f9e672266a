"""BNSR's pluggable warps and their maths: per-channel monotone maps of standardised values.

Our reconstruction of the nonlinearity of BNSR (Ding et al., ICPR 2020; the paper's body was not
available; see its method card). Per channel ``c``, over the batch (and spatial) axes::

    x_hat = (x - mean) / sqrt(var + eps)                     # BatchNorm's standardisation
    s     = mean(x_hat^3)                                    # batch skewness
    lam   = clip_exponent(1 - alpha * tanh(s))               # warp exponent (1 = identity)
    y     = YJ(x_hat; lam)                                   # Yeo-Johnson warp
    out   = gamma * (y - mean(y)) / sqrt(var(y) + eps) + beta

with the Yeo-Johnson transform ::

    YJ(x; lam) = ((1 + x)^lam - 1) / lam                 x >= 0
               = -((1 - x)^(2 - lam) - 1) / (2 - lam)     x < 0

A right-skewed channel (``s > 0``) gets ``lam < 1``, which compresses the right tail and stretches
the left one; a left-skewed channel gets ``lam > 1``. With ``newton_steps > 0``, a few Newton steps
on ``lam`` drive the skewness of ``y`` towards zero. ``lam`` is kept in ``[LAM_LOW, LAM_HIGH]``
(``[-1, 3]``); inside ``[0, 2]`` the warp is an increasing bijection of the real line, outside it
one branch saturates (``lam < 0`` bounds the right tail, which strongly right-skewed data needs).

A :class:`Warp` has one parameter per channel; the BNSR layers keep its running average in
``running_lam``. :class:`YeoJohnsonWarp` (the default) chooses the Yeo-Johnson exponent from the
batch skewness; :class:`IdentityWarp` makes a BNSR layer exactly BatchNorm.

The maths (:func:`yeo_johnson`, :func:`skewness_warp`, ...) are plain functions on tensors, here
because both the layers (:mod:`lightning_dnn_tricks.nn.bnsr`) and the surgery
(:mod:`lightning_dnn_tricks.functional.bnsr`, which re-exports them) import this module; it imports
neither. Pure PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from lightning_dnn_tricks.validation import check_choice, check_number

__all__ = [
    "LAM_HIGH",
    "LAM_LOW",
    "LOG_GAP",
    "WARPS",
    "IdentityWarp",
    "Warp",
    "WarpName",
    "YeoJohnsonWarp",
    "batch_skewness",
    "clip_exponent",
    "make_warp",
    "newton_exponent",
    "skewness_exponent",
    "skewness_warp",
    "yeo_johnson",
    "yeo_johnson_warp",
]

#: The range of the warp exponent ``lam``.
LAM_LOW, LAM_HIGH = -1.0, 3.0
#: Exponents closer than this to 0 or 2 (where a branch becomes a logarithm) are moved this far
#: away, so the fast path never divides by ~0; the warp changes by less than ``1e-3 log1p(|x|)^2``.
LOG_GAP = 1e-3
_NEWTON_MAX_STEP = 0.5
_TINY = 1e-12


def _reduce_dims(x: Tensor) -> tuple[int, ...]:
    """Every axis but the channel axis (1): the axes BatchNorm averages over."""
    if x.dim() < 2:
        raise ValueError(f"BNSR expects inputs of shape (N, C, ...), got {tuple(x.shape)}.")
    return (0, *range(2, x.dim()))


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    """A ``(C,)`` tensor shaped to broadcast over ``like`` (``(1, C, 1, ...)``)."""
    return values.view(1, -1, *([1] * (like.dim() - 2)))


def yeo_johnson(x: Tensor, lam: Tensor | float) -> Tensor:
    """The Yeo-Johnson transform ``YJ(x; lam)`` for any real ``lam`` (broadcast against ``x``).

    ``((1 + x)^lam - 1) / lam`` for ``x >= 0`` (``log1p(x)`` at ``lam = 0``) and
    ``-((1 - x)^(2 - lam) - 1) / (2 - lam)`` for ``x < 0`` (``-log1p(-x)`` at ``lam = 2``);
    computed with ``log1p``/``expm1``, so it is exact near ``x = 0`` and ``lam = 0, 2``.

    Raises:
        TypeError: ``x`` is not a tensor, or ``lam`` is neither a tensor nor a number.
        ValueError: ``lam`` is a non-finite number or a bool.

    Examples:
        >>> import torch
        >>> yeo_johnson(torch.tensor([-1.0, 0.0, 3.0]), 0.5)  # -(2^1.5 - 1) / 1.5, 0, (2 - 1) / 0.5
        tensor([-1.2190,  0.0000,  2.0000])
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"`x` must be a tensor, got {type(x).__name__}.")
    if not isinstance(lam, Tensor):
        if not isinstance(lam, int | float):
            raise TypeError(f"`lam` must be a tensor or a number, got {type(lam).__name__}.")
        check_number("lam", lam)
    lam = torch.as_tensor(lam, dtype=x.dtype, device=x.device)
    power = torch.where(x >= 0, lam, 2.0 - lam)
    log_term = torch.log1p(x.abs())
    near_log = power.abs() < _TINY
    safe_power = torch.where(near_log, torch.ones_like(power), power)
    magnitude = torch.where(near_log, log_term, torch.expm1(power * log_term) / safe_power)
    return magnitude.copysign(x)


def batch_skewness(x_hat: Tensor) -> Tensor:
    """``mean(x_hat^3)`` per channel (axis 1) over all other axes: skewness of standardised data.

    An empty batch has skewness 0 (so its warp is the identity), not NaN.

    Examples:
        >>> import torch
        >>> batch_skewness(torch.tensor([[-1.0], [-1.0], [2.0]])).tolist()   # (-1 - 1 + 8) / 3
        [2.0]
    """
    dims = _reduce_dims(x_hat)
    if x_hat.numel() == 0:
        return x_hat.new_zeros(x_hat.shape[1])
    return x_hat.pow(3).mean(dims)


def clip_exponent(lam: Tensor) -> Tensor:
    """``lam`` clipped to ``[LAM_LOW, LAM_HIGH]``, at least ``LOG_GAP`` away from 0 and 2."""
    lam = lam.clamp(LAM_LOW, LAM_HIGH)
    log_point = (lam >= 1.0).to(lam.dtype) * 2.0  # the nearer of 0 and 2
    offset = lam - log_point
    nudged = log_point + torch.full_like(lam, LOG_GAP).copysign_(offset)
    return torch.where(offset.abs() < LOG_GAP, nudged, lam)


def skewness_exponent(skewness: Tensor, alpha: float) -> Tensor:
    """``lam = clip_exponent(1 - alpha * tanh(s))``: the warp exponent of each channel."""
    return clip_exponent(1.0 - alpha * torch.tanh(skewness))


class _WarpParts(NamedTuple):
    """Intermediates of ``YJ(x; lam)``, kept for the backward pass and the Newton step."""

    base: Tensor  # 1 + |x|
    log_base: Tensor  # log(1 + |x|)
    power: Tensor  # lam where x > 0, 2 - lam where x < 0 (1 at x = 0)
    grown: Tensor  # (1 + |x|)^power
    magnitude: Tensor  # |YJ(x; lam)| = (grown - 1) / power
    warped: Tensor  # YJ(x; lam) = sign(x) magnitude


def _d_lam(log_base: Tensor, power: Tensor, grown: Tensor, magnitude: Tensor) -> Tensor:
    """``dYJ/dlam = (log(1 + |x|) (1 + |x|)^p - |YJ|) / p`` (one formula for both branches)."""
    return torch.mul(log_base, grown).sub_(magnitude).div_(power)


def _warp_parts(x: Tensor, lam: Tensor) -> _WarpParts:
    """``YJ(x; lam)`` for a clipped ``lam`` (no division by ~0) and its intermediates.

    ``p = 1 + (lam - 1) sign(x)`` and plain ``log``/``exp``: no ``torch.where``, ``log1p`` or
    ``expm1``, which are several times slower on CPU.
    """
    sign = x.sign()
    power = torch.mul(sign, lam - 1.0).add_(1.0)
    base = x.abs().add_(1.0)
    log_base = base.log()
    grown = torch.mul(power, log_base).exp_()
    magnitude = torch.sub(grown, 1.0).div_(power)
    return _WarpParts(base, log_base, power, grown, magnitude, magnitude * sign)


class _YeoJohnsonFunction(torch.autograd.Function):
    """``YJ(x_hat; lam)`` with ``lam = g(mean(x_hat^3))`` per channel, and its exact gradient.

    ``lam`` is given (detached); ``slope = 3 g'(s) / count`` (or ``None`` for a constant ``lam``)
    adds the path through the skewness:
    ``d out / d x_hat += slope * x_hat^2 * sum(grad * dYJ/dlam)``.
    The backward pass reuses the forward's intermediates (no transcendental function) instead of
    autograd's chain of a dozen operations.
    """

    @staticmethod
    def forward(ctx: FunctionCtx, x_hat: Tensor, lam: Tensor, slope: Tensor | None) -> Tensor:
        parts = _warp_parts(x_hat, lam)
        ctx.save_for_backward(x_hat, *parts[:-1])
        ctx.slope = slope  # type: ignore[attr-defined]
        return parts.warped

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        x_hat, base, log_base, power, grown, magnitude = ctx.saved_tensors
        slope = ctx.slope
        # dYJ/dx = (1 + |x|)^(p - 1)
        grad_x = torch.mul(grad, grown).div_(base)
        if slope is not None:
            grad_lam = _d_lam(log_base, power, grown, magnitude).mul_(grad)
            grad_lam = grad_lam.sum(_reduce_dims(grad_lam), keepdim=True)
            grad_x.addcmul_(x_hat * x_hat, grad_lam * slope)
        return grad_x, None, None


def yeo_johnson_warp(x_hat: Tensor, lam: Tensor) -> Tensor:
    """``YJ(x_hat; lam)`` with a constant per-channel ``lam`` of shape ``(C,)`` (clipped to range).

    The fast path of the layers in eval mode; differentiable with respect to ``x_hat``.
    """
    lam = clip_exponent(lam.detach().to(x_hat.dtype))
    warped: Tensor = _YeoJohnsonFunction.apply(x_hat, _per_channel(lam, x_hat), None)
    return warped


@torch.no_grad()
def newton_exponent(x_hat: Tensor, lam: Tensor, steps: int) -> Tensor:
    """``steps`` Newton steps on each channel's ``lam`` toward zero skewness of ``YJ(x_hat; lam)``.

    With ``y = YJ(x_hat; lam)``, ``c = y - mean(y)``, ``m_k = mean(c^k)`` and ``y' = dy/dlam``:
    ``f = m3 / m2^1.5`` and
    ``f' = (3 mean(c^2 y') - 3 m2 mean(y')) / m2^1.5 - 3 m3 mean(c y') / m2^2.5``,
    ``lam <- clip_exponent(lam - clip(f / f', -0.5, 0.5))``. A channel with ``f' <= 0`` (constant)
    keeps its ``lam``. Runs without autograd.

    Args:
        x_hat: standardised values ``(N, C, ...)``.
        lam: starting exponents ``(C,)``.
        steps: number of Newton steps (0 returns ``lam``).

    Returns:
        The exponents ``(C,)`` after the steps (see :func:`clip_exponent`).
    """
    dims = _reduce_dims(x_hat)
    lam = clip_exponent(lam.to(x_hat.dtype))
    if x_hat.numel() == 0:
        return lam
    for _ in range(steps):
        parts = _warp_parts(x_hat, _per_channel(lam, x_hat))
        warped, d_lam = parts.warped, _d_lam(*parts[1:5])
        centred = warped - warped.mean(dims, keepdim=True)
        squared = centred * centred
        m2 = squared.mean(dims).clamp_min(_TINY)
        m3 = (squared * centred).mean(dims)
        d_m3 = 3.0 * ((squared * d_lam).mean(dims) - m2 * d_lam.mean(dims))
        d_m2 = 2.0 * (centred * d_lam).mean(dims)
        value = m3 / m2.pow(1.5)
        slope = d_m3 / m2.pow(1.5) - 1.5 * m3 * d_m2 / m2.pow(2.5)
        usable = slope > _TINY
        step = torch.where(usable, value / torch.where(usable, slope, 1.0), 0.0)
        lam = clip_exponent(lam - step.clamp(-_NEWTON_MAX_STEP, _NEWTON_MAX_STEP))
    return lam


def skewness_warp(
    x_hat: Tensor, alpha: float = 1.0, newton_steps: int = 0
) -> tuple[Tensor, Tensor]:
    """The training-mode warp: ``lam`` from the batch skewness, then ``YJ(x_hat; lam)``.

    Args:
        x_hat: standardised values ``(N, C, ...)`` (batch statistics).
        alpha: ``lam = 1 - alpha * tanh(s)``.
        newton_steps: further Newton steps toward zero skewness (see :func:`newton_exponent`).

    Returns:
        ``(y, lam)``: the warped values and the exponents ``(C,)`` (detached, for running averages).

    Note:
        The gradient flows through ``lam``'s dependence on the skewness (like BatchNorm's through
        its mean and variance). After Newton steps ``lam`` is treated as a constant in the
        backward pass (our choice: the implicit derivative of the root is not propagated). An
        empty batch gives an empty ``y`` and ``lam = 1`` (the identity), never NaN.
    """
    with torch.no_grad():
        skewness = batch_skewness(x_hat)
        tanh = torch.tanh(skewness)
        raw = 1.0 - alpha * tanh
        lam = clip_exponent(raw)
        slope = None
        if newton_steps:
            lam = newton_exponent(x_hat, lam, newton_steps)
        elif x_hat.requires_grad and alpha:
            count = max(1, x_hat.numel() // max(1, x_hat.shape[1]))  # an empty batch: no slope
            inside = (raw >= LAM_LOW) & (raw <= LAM_HIGH)
            slope = _per_channel((-3.0 * alpha / count) * (1.0 - tanh * tanh) * inside, x_hat)
    warped: Tensor = _YeoJohnsonFunction.apply(x_hat, _per_channel(lam, x_hat), slope)
    return warped, lam


WarpName = Literal["yeo_johnson", "identity"]
WARPS: tuple[WarpName, ...] = ("yeo_johnson", "identity")


class Warp:
    """A per-channel monotone warp of standardised values: the pluggable part of BNSR.

    A warp has one parameter per channel (the layers keep its running average in
    ``running_lam``); ``identity_value`` is the parameter at which it is the identity. Subclass it
    and implement :meth:`fit` (training: choose the parameter from the batch and warp,
    differentiably) and :meth:`apply` (evaluation: warp with a given parameter).
    """

    name: str = "warp"
    identity_value: float = 1.0

    @property
    def is_identity(self) -> bool:
        """``True`` when the warp never changes its input (the layer is then exactly BatchNorm)."""
        return False

    def fit(self, x_hat: Tensor) -> tuple[Tensor, Tensor]:
        """Warp a batch of standardised values; return ``(warped, parameter per channel)``."""
        raise NotImplementedError

    def apply(self, x_hat: Tensor, parameter: Tensor) -> Tensor:
        """Warp standardised values with a given ``(C,)`` parameter (evaluation mode)."""
        raise NotImplementedError


@dataclass(frozen=True)
class YeoJohnsonWarp(Warp):
    """Yeo-Johnson warp with the exponent ``lam = 1 - alpha * tanh(skewness)`` (our reconstruction).

    Args:
        alpha: strength, in ``[0, 2]``; 0 is the identity (with ``newton_steps = 0``).
        newton_steps: Newton steps on ``lam`` toward zero batch skewness, in ``[0, 10]``.

    Raises:
        ValueError: an argument is out of range.

    Examples:
        >>> import torch
        >>> warped, lam = YeoJohnsonWarp(alpha=1.0).fit(torch.randn(256, 3).exp())
        >>> bool((lam < 1).all())  # right-skewed channels: compress the right tail
        True
    """

    alpha: float = 1.0
    newton_steps: int = 0
    name = "yeo_johnson"

    def __post_init__(self) -> None:
        check_number("alpha", self.alpha, low=0.0, high=2.0)
        check_number("newton_steps", self.newton_steps, low=0, high=10, integer=True)

    @property
    def is_identity(self) -> bool:
        return self.alpha == 0 and self.newton_steps == 0

    def fit(self, x_hat: Tensor) -> tuple[Tensor, Tensor]:
        return skewness_warp(x_hat, self.alpha, self.newton_steps)

    def apply(self, x_hat: Tensor, parameter: Tensor) -> Tensor:
        return yeo_johnson_warp(x_hat, parameter)


@dataclass(frozen=True)
class IdentityWarp(Warp):
    """No warp: a BNSR layer with it computes exactly what BatchNorm computes."""

    name = "identity"

    @property
    def is_identity(self) -> bool:
        return True

    def fit(self, x_hat: Tensor) -> tuple[Tensor, Tensor]:
        return x_hat, x_hat.new_full((x_hat.shape[1],), self.identity_value)

    def apply(self, x_hat: Tensor, parameter: Tensor) -> Tensor:
        return x_hat


def make_warp(
    warp: WarpName | Warp = "yeo_johnson", alpha: float = 1.0, newton_steps: int = 0
) -> Warp:
    """The :class:`Warp` named ``warp`` (or ``warp`` itself), refusing arguments it would ignore.

    Raises:
        ValueError: an unknown name, an out-of-range argument (checked for every warp, also
            where it is then refused as unused), or ``alpha``/``newton_steps`` given with a warp
            that does not use them.
    """
    check_number("alpha", alpha, low=0.0, high=2.0)
    check_number("newton_steps", newton_steps, low=0, high=10, integer=True)
    if isinstance(warp, Warp):
        if (alpha, newton_steps) != (1.0, 0):
            raise ValueError(
                "`alpha` and `newton_steps` configure the built-in 'yeo_johnson' warp; "
                f"set them on the given {type(warp).__name__} instead."
            )
        return warp
    check_choice("warp", warp, WARPS)
    if warp == "identity":
        if (alpha, newton_steps) != (1.0, 0):
            raise ValueError(
                f"`alpha` ({alpha}) and `newton_steps` ({newton_steps}) have no effect with "
                "warp='identity'; leave them at their defaults (1.0 and 0)."
            )
        return IdentityWarp()
    return YeoJohnsonWarp(alpha=alpha, newton_steps=newton_steps)
