"""BNSR layers: BatchNorm with skewness reduction (Ding et al., ICPR 2020) — *our reconstruction*.

Each layer is a subclass of the BatchNorm class it replaces (``BNSR1d`` of ``nn.BatchNorm1d``,
``BNSR2d`` of ``nn.BatchNorm2d``, ``BNSRAct2d`` of timm's ``BatchNormAct2d``), so code that looks
for BatchNorm layers by ``isinstance`` (weight-decay exclusion, freezing) still finds them. In
training mode, per channel::

    x_hat = BatchNorm standardisation of x       (updates running_mean / running_var)
    y, lam = warp.fit(x_hat)                     (Yeo-Johnson, lam = 1 - alpha tanh(skewness))
    out = gamma * standardise(y) + beta          (updates running_warp_mean / running_warp_var)

and ``running_lam`` averages ``lam`` with BatchNorm's update rule (``momentum``, or the cumulative
average when ``momentum=None``). In eval mode every statistic comes from the running averages, so
the output is deterministic. Everything is computed in float32 (or wider), also in a model cast
to float16/bfloat16. An empty batch gives an empty output and keeps the statistics, like BatchNorm.
The warp maths is in :mod:`lightning_dnn_tricks.nn.bnsr_warps`;
:func:`~lightning_dnn_tricks.functional.apply_bnsr` puts these layers into a model (this module
never imports :mod:`lightning_dnn_tricks.functional`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import cache, partial
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F
from timm.layers import BatchNormAct2d
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from lightning_dnn_tricks.nn.bnsr_warps import Warp, YeoJohnsonWarp
from lightning_dnn_tricks.nn.surgery import (
    LayerSelection,
    SurgerySummary,
    replace_modules,
    share_state,
)
from lightning_dnn_tricks.validation import check_bool, check_number

__all__ = [
    "BNSR_BUFFERS",
    "BNSR1d",
    "BNSR2d",
    "BNSRAct2d",
    "bnsr_class_for",
    "check_batch_norm_arguments",
    "replace_batch_norms",
    "restore_batch_norms",
]

#: The buffers BNSR adds to BatchNorm's (running averages of the warp exponent and post-warp stats).
BNSR_BUFFERS = ("running_lam", "running_warp_mean", "running_warp_var")

T = TypeVar("T", bound="_BNSRMixin")


class _BNSRMixin(_BatchNorm):
    """The BNSR forward pass, shared by the 1d, 2d and timm layers (put first in the bases)."""

    replaces: ClassVar[type[_BatchNorm]]
    warp: Warp
    running_lam: Tensor | None
    running_warp_mean: Tensor | None
    running_warp_var: Tensor | None

    def __init__(
        self, *args: Any, warp: Warp | None = None, compiled: bool = False, **kwargs: Any
    ) -> None:
        check_batch_norm_arguments(self.replaces, args, kwargs)
        super().__init__(*args, **kwargs)
        self.warp = YeoJohnsonWarp() if warp is None else warp
        if not isinstance(self.warp, Warp):
            raise TypeError(f"`warp` must be a Warp instance, got {type(self.warp).__name__}.")
        self.compiled = check_compiled(compiled)
        if self.track_running_stats:
            like = self.running_mean
            assert like is not None
            identity = self.warp.identity_value
            self.register_buffer("running_lam", torch.full_like(like, identity))
            self.register_buffer("running_warp_mean", torch.zeros_like(like))
            self.register_buffer("running_warp_var", torch.ones_like(like))
        else:
            for name in BNSR_BUFFERS:
                self.register_buffer(name, None)

    @classmethod
    def from_module(
        cls: type[T], module: nn.Module, warp: Warp | None = None, compiled: bool = False
    ) -> T:
        """A BNSR layer that takes over ``module`` (an exact ``cls.replaces`` instance).

        The new layer *shares* ``module``'s parameters, running statistics and sub-modules
        (timm's ``act`` and ``drop``), so optimizer references and checkpoint keys stay valid;
        it is created on the same device and dtype and in the same training mode.

        Raises:
            TypeError: ``module`` is not exactly of class ``cls.replaces``.
        """
        if type(module) is not cls.replaces:
            raise TypeError(
                f"{cls.__name__}.from_module expects a {cls.replaces.__name__}, got "
                f"{type(module).__name__}; use bnsr_class_for(module) to pick the class."
            )
        assert isinstance(module, _BatchNorm)
        reference = module.running_mean if module.running_mean is not None else module.weight
        factory = (
            {} if reference is None else {"device": reference.device, "dtype": reference.dtype}
        )
        new = cls(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            warp=warp,
            compiled=compiled,
            **factory,
        )
        share_state(module, new)
        new.train(module.training)
        return new

    def to_batch_norm(self) -> _BatchNorm:
        """The plain ``replaces`` layer sharing this layer's parameters, statistics and children."""
        plain = self.replaces(
            self.num_features,
            eps=self.eps,
            momentum=self.momentum,
            affine=self.affine,
            track_running_stats=self.track_running_stats,
        )
        share_state(self, plain)
        for name in BNSR_BUFFERS:
            plain._buffers.pop(name, None)
        return plain.train(self.training)

    def extra_repr(self) -> str:
        compiled = ", compiled=True" if self.compiled else ""
        return f"{super().extra_repr()}, warp={self.warp!r}{compiled}"

    def _finish(self, out: Tensor) -> Tensor:
        """What the replaced class does after normalising (timm: dropout and activation)."""
        return out

    def forward(self, input: Tensor) -> Tensor:
        if self.warp.is_identity:
            out: Tensor = super().forward(input)  # exactly the replaced class
            return out
        self._check_input_dim(input)
        return self._finish(self._normalise(input))

    def _update_factor(self) -> float:
        """BatchNorm's averaging factor; counts the batch like BatchNorm does."""
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked)
        return factor

    def _normalise(self, input: Tensor) -> Tensor:
        factor = self._update_factor()
        batch_stats = self.training or self.running_mean is None
        # Running statistics are passed when they are read (eval) or updated (training + tracked).
        use_buffers = not self.training or self.track_running_stats
        # float32 or wider, also in a half-precision model (mean(x_hat^3) and (1 + |x_hat|)^p
        # overflow there): half buffers get float32 copies, written back after the update.
        dtype = torch.promote_types(input.dtype, torch.float32)
        buffers = tuple(
            getattr(self, name) if use_buffers else None
            for name in ("running_mean", "running_var", *BNSR_BUFFERS)
        )
        statistics = tuple(None if b is None else b.to(dtype) for b in buffers)
        weight = None if self.weight is None else self.weight.to(dtype)
        bias = None if self.bias is None else self.bias.to(dtype)
        x = input.to(dtype)
        if x.numel() == 0:  # like BatchNorm: empty output, statistics kept (the batch counted)
            running_mean, running_var = (None, None) if batch_stats else statistics[:2]
            empty = F.batch_norm(
                x, running_mean, running_var, weight, bias, batch_stats, 0.0, self.eps
            )
            return empty.to(input.dtype)
        normalise = _compiled_normalise() if self.compiled else bnsr_normalise
        out: Tensor = normalise(
            x,
            self.warp,
            statistics,
            weight,
            bias,
            batch_stats=batch_stats,
            update_lam=self.training,
            factor=factor,
            eps=self.eps,
        )
        if batch_stats:
            for buffer, statistic in zip(buffers, statistics, strict=True):
                if buffer is not None and statistic is not None and statistic is not buffer:
                    buffer.copy_(statistic)
        return out.to(input.dtype)

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # A BatchNorm checkpoint (no warp statistics) loads; the warp statistics stay as they are.
        for name in BNSR_BUFFERS:
            value = getattr(self, name)
            if value is not None and f"{prefix}running_mean" in state_dict:
                state_dict.setdefault(prefix + name, value.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def check_batch_norm_arguments(
    cls: type[_BatchNorm], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Check ``num_features >= 1``, ``eps > 0`` (0 would make a constant channel NaN),
    ``momentum`` (``None`` or in ``[0, 1]``) and the bools ``affine``, ``track_running_stats``.

    Raises:
        ValueError, TypeError: naming the argument (``TypeError``: wrong type or signature).
    """
    try:
        values = inspect.signature(cls.__init__).bind(None, *args, **kwargs).arguments
    except TypeError as error:
        raise TypeError(f"{cls.__name__}: {error}.") from None
    if "num_features" in values:
        check_number("num_features", values["num_features"], low=1, integer=True)
    if "eps" in values:
        check_number("eps", values["eps"], low=0.0, low_inclusive=False)
    if values.get("momentum") is not None:
        check_number("momentum", values["momentum"], low=0.0, high=1.0)
    for flag in ("affine", "track_running_stats"):
        if flag in values:
            check_bool(flag, values[flag])


def check_compiled(compiled: bool) -> bool:
    """``compiled`` if it is a bool; ``ValueError`` naming the argument otherwise."""
    if not isinstance(compiled, bool):
        raise ValueError(f"`compiled` must be True or False, got {compiled!r}.")
    return compiled


def bnsr_normalise(
    x: Tensor,
    warp: Warp,
    statistics: tuple[Tensor | None, ...],
    weight: Tensor | None,
    bias: Tensor | None,
    *,
    batch_stats: bool,
    update_lam: bool,
    factor: float,
    eps: float,
) -> Tensor:
    """BNSR's normalisation (before timm's activation): BatchNorm, warp, BatchNorm with affine.

    ``statistics`` holds ``running_mean, running_var, running_lam, running_warp_mean,
    running_warp_var`` (each ``None`` when not read or updated); with ``batch_stats`` the
    running averages are updated in place with ``factor``, as ``F.batch_norm`` does.
    """
    running_mean, running_var, running_lam, warp_mean, warp_var = statistics
    x_hat = F.batch_norm(x, running_mean, running_var, None, None, batch_stats, factor, eps)
    if batch_stats:
        warped, lam = warp.fit(x_hat)
        if update_lam and running_lam is not None:
            running_lam.lerp_(lam.to(running_lam.dtype), factor)
    else:
        assert running_lam is not None
        warped = warp.apply(x_hat, running_lam)
    return F.batch_norm(warped, warp_mean, warp_var, weight, bias, batch_stats, factor, eps)


@cache
def _compiled_normalise() -> Callable[..., Tensor]:
    """:func:`bnsr_normalise` through ``torch.compile`` (built once, on first use)."""
    return torch.compile(bnsr_normalise)


class BNSR1d(_BNSRMixin, nn.BatchNorm1d):
    """BNSR for ``(N, C)`` or ``(N, C, L)`` inputs; an ``nn.BatchNorm1d`` (our reconstruction).

    Training mode, per channel: BatchNorm's standardisation ``x_hat``, the skewness
    ``s = mean(x_hat^3)``, the warp ``y = YJ(x_hat; lam)`` with ``lam = 1 - alpha tanh(s)``,
    re-standardisation of ``y`` and BatchNorm's affine ``gamma, beta``. Running averages of the
    BatchNorm statistics, of ``lam`` and of ``y``'s mean and variance make eval mode deterministic.

    Args:
        *args: ``nn.BatchNorm1d``'s arguments (``num_features``, ``eps``, ``momentum``, ...).
        warp: the :class:`~lightning_dnn_tricks.nn.bnsr_warps.Warp` (default: Yeo-Johnson with
            ``alpha = 1``); :class:`~lightning_dnn_tricks.nn.bnsr_warps.IdentityWarp` makes the
            layer exactly ``nn.BatchNorm1d``.
        compiled: run the normalisation through ``torch.compile`` (same maths, fused
            kernels; see :class:`~lightning_dnn_tricks.callbacks.BNSR`).
        **kwargs: ``nn.BatchNorm1d``'s keyword arguments.

    Raises:
        TypeError: ``warp`` is not a :class:`~lightning_dnn_tricks.nn.bnsr_warps.Warp`, the
            arguments do not fit ``nn.BatchNorm1d``, or ``affine``/``track_running_stats`` is
            not a bool.
        ValueError: ``compiled`` is not a bool, or ``num_features``, ``eps`` (``> 0``) or
            ``momentum`` (``None`` or in ``[0, 1]``) is out of range (the message names it).

    Examples:
        >>> import torch
        >>> layer = BNSR1d(4)
        >>> layer(torch.randn(32, 4).exp()).shape
        torch.Size([32, 4])

    Note:
        The warp is our reconstruction of the paper's nonlinearity (method card). A float16 or
        bfloat16 model is normalised in float32 (half precision overflows in the skewness and the
        warp). An empty batch gives an empty output, like BatchNorm: the running statistics are
        kept and ``num_batches_tracked`` is counted, as BatchNorm counts it.
    """

    replaces = nn.BatchNorm1d


class BNSR2d(_BNSRMixin, nn.BatchNorm2d):
    """BNSR for ``(N, C, H, W)`` inputs; an ``nn.BatchNorm2d`` (our reconstruction).

    The same computation as :class:`BNSR1d`, per channel over the batch and spatial axes.

    Args:
        *args: ``nn.BatchNorm2d``'s arguments (``num_features``, ``eps``, ``momentum``, ...).
        warp: the :class:`~lightning_dnn_tricks.nn.bnsr_warps.Warp` (default: Yeo-Johnson).
        compiled: run the normalisation through ``torch.compile`` (same maths, fused
            kernels; see :class:`~lightning_dnn_tricks.callbacks.BNSR`).
        **kwargs: ``nn.BatchNorm2d``'s keyword arguments.

    Raises:
        TypeError, ValueError: as :class:`BNSR1d` (the message names the argument).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> layer = BNSR2d.from_module(nn.BatchNorm2d(8))
        >>> isinstance(layer, nn.BatchNorm2d), layer(torch.randn(4, 8, 5, 5)).shape
        (True, torch.Size([4, 8, 5, 5]))

    Note:
        The warp is our reconstruction of the paper's nonlinearity (see its method card).
    """

    replaces = nn.BatchNorm2d


class BNSRAct2d(_BNSRMixin, BatchNormAct2d):
    """BNSR in place of timm's fused ``BatchNormAct2d``, keeping its dropout and activation.

    Computes :class:`BNSR2d`'s normalisation, then ``self.drop`` and ``self.act`` as
    ``BatchNormAct2d.forward`` does; an instance of ``BatchNormAct2d`` (our reconstruction).

    Args:
        *args: ``BatchNormAct2d``'s arguments (``num_features``, ``act_layer``, ...).
        warp: the :class:`~lightning_dnn_tricks.nn.bnsr_warps.Warp` (default: Yeo-Johnson).
        compiled: run the normalisation through ``torch.compile`` (same maths, fused
            kernels; see :class:`~lightning_dnn_tricks.callbacks.BNSR`).
        **kwargs: ``BatchNormAct2d``'s keyword arguments.

    Raises:
        TypeError, ValueError: as :class:`BNSR1d` (the message names the argument).

    Examples:
        >>> from timm.layers import BatchNormAct2d
        >>> layer = BNSRAct2d.from_module(BatchNormAct2d(8, act_layer="silu"))
        >>> type(layer.act).__name__
        'SiLU'

    Note:
        The warp is our reconstruction of the paper's nonlinearity (see its method card).
    """

    replaces = BatchNormAct2d

    def _finish(self, out: Tensor) -> Tensor:
        result: Tensor = self.act(self.drop(out))
        return result


BNSR_CLASSES: tuple[type[_BNSRMixin], ...] = (BNSR1d, BNSR2d, BNSRAct2d)
_BY_REPLACED: dict[type[nn.Module], type[_BNSRMixin]] = {c.replaces: c for c in BNSR_CLASSES}


def bnsr_class_for(module: nn.Module) -> type[_BNSRMixin] | None:
    """The BNSR class that replaces ``module`` (exact class match), or ``None``.

    Raises:
        TypeError: ``module`` is not an ``nn.Module``.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    return _BY_REPLACED.get(type(module))


def _skip_reason(name: str, module: nn.Module) -> str | None:
    if bnsr_class_for(module) is not None:
        return None
    return "no BNSR counterpart for this BatchNorm class (only BatchNorm1d/2d, BatchNormAct2d)"


def _to_bnsr(module: nn.Module, warp: Warp, compiled: bool) -> nn.Module:
    return _BY_REPLACED[type(module)].from_module(module, warp, compiled)


def _to_batch_norm(module: nn.Module) -> nn.Module:
    assert isinstance(module, _BNSRMixin)
    return module.to_batch_norm()


def replace_batch_norms(
    model: nn.Module,
    warp: Warp,
    include: str | None = None,
    exclude: str | None = None,
    compiled: bool = False,
) -> SurgerySummary:
    """Swap each BatchNorm layer for its BNSR class (the surgery behind ``apply_bnsr``)."""
    return replace_modules(
        model,
        LayerSelection(types=(_BatchNorm,), include=include, exclude=exclude),
        partial(_to_bnsr, warp=warp, compiled=compiled),
        tag="bnsr",
        skip=_skip_reason,
        is_applied=lambda m: isinstance(m, _BNSRMixin),
    )


def restore_batch_norms(
    model: nn.Module, include: str | None = None, exclude: str | None = None
) -> SurgerySummary:
    """Swap each BNSR layer back for the BatchNorm class it replaced (``remove_bnsr``)."""
    selection = LayerSelection(types=BNSR_CLASSES, include=include, exclude=exclude)
    return replace_modules(model, selection, _to_batch_norm, tag="remove_bnsr")
