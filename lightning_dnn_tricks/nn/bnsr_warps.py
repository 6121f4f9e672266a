"""BNSR's pluggable warps: per-channel monotone maps of standardised values (our reconstruction).

A :class:`Warp` has one parameter per channel; the BNSR layers keep its running average in
``running_lam``. :class:`YeoJohnsonWarp` (the default) chooses the Yeo-Johnson exponent from the
batch skewness; :class:`IdentityWarp` makes a BNSR layer exactly BatchNorm. The maths is in
:mod:`lightning_dnn_tricks.functional.bnsr`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor

from lightning_dnn_tricks.functional.bnsr import skewness_warp, yeo_johnson_warp
from lightning_dnn_tricks.validation import check_choice, check_number

__all__ = ["WARPS", "IdentityWarp", "Warp", "WarpName", "YeoJohnsonWarp", "make_warp"]

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
        ValueError: an unknown name, an out-of-range argument, or ``alpha``/``newton_steps`` given
            with a warp that does not use them.
    """
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
