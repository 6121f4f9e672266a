"""BNSR (Ding et al., ICPR 2020) as model surgery: :func:`apply_bnsr` and :func:`remove_bnsr`.

BNSR is batch normalisation with skewness reduction (our reconstruction, as its method card says:
the paper's body was not available): per channel, BatchNorm's standardisation ``x_hat``, a
Yeo-Johnson warp ``y = YJ(x_hat; lam)`` with ``lam = 1 - alpha * tanh(mean(x_hat^3))``, then
BatchNorm's re-standardisation and affine map.

The layers are in :mod:`lightning_dnn_tricks.nn.bnsr`; the warp maths as plain tensor functions
(:func:`yeo_johnson`, :func:`skewness_warp`, :func:`newton_exponent`, ...) are in
:mod:`lightning_dnn_tricks.nn.bnsr_warps` and re-exported here. Like ``apply_weight_align``, this
module imports the layers it applies; they never import it. Pure PyTorch.
"""

from __future__ import annotations

from torch import nn

from lightning_dnn_tricks.nn.bnsr import check_compiled, replace_batch_norms, restore_batch_norms
from lightning_dnn_tricks.nn.bnsr_warps import (
    LAM_HIGH,
    LAM_LOW,
    LOG_GAP,
    Warp,
    WarpName,
    batch_skewness,
    clip_exponent,
    make_warp,
    newton_exponent,
    skewness_exponent,
    skewness_warp,
    yeo_johnson,
    yeo_johnson_warp,
)
from lightning_dnn_tricks.nn.selection import check_pattern
from lightning_dnn_tricks.nn.surgery import SurgerySummary

__all__ = [
    "LAM_HIGH",
    "LAM_LOW",
    "LOG_GAP",
    "apply_bnsr",
    "batch_skewness",
    "check_bnsr_arguments",
    "clip_exponent",
    "newton_exponent",
    "remove_bnsr",
    "skewness_exponent",
    "skewness_warp",
    "yeo_johnson",
    "yeo_johnson_warp",
]


def check_bnsr_arguments(
    warp: WarpName | Warp,
    alpha: float,
    newton_steps: int,
    include: str | None,
    exclude: str | None,
    compiled: bool = False,
) -> Warp:
    """Validate the BNSR arguments (messages name the argument); return the warp."""
    check_compiled(compiled)
    check_pattern("include", include)
    check_pattern("exclude", exclude)
    return make_warp(warp, alpha, newton_steps)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")


def apply_bnsr(
    model: nn.Module,
    alpha: float = 1.0,
    warp: WarpName | Warp = "yeo_johnson",
    newton_steps: int = 0,
    include: str | None = None,
    exclude: str | None = None,
    compiled: bool = False,
) -> SurgerySummary:
    """Replace every BatchNorm layer of ``model`` by its BNSR counterpart, in place (idempotent).

    ``nn.BatchNorm1d`` -> :class:`~lightning_dnn_tricks.nn.bnsr.BNSR1d`, ``nn.BatchNorm2d`` ->
    :class:`~lightning_dnn_tricks.nn.bnsr.BNSR2d` and timm's ``BatchNormAct2d`` ->
    :class:`~lightning_dnn_tricks.nn.bnsr.BNSRAct2d` (activation and dropout kept). Each new layer
    is an instance of the class it replaces and shares its parameters, running statistics and
    sub-modules (so an optimizer built earlier and checkpoint keys stay valid). Other BatchNorm
    classes (``SyncBatchNorm``, ``BatchNorm3d``, user subclasses) are skipped with a reason.

    Args:
        model: the model to change in place.
        alpha: warp strength, ``lam = 1 - alpha * tanh(skewness)``; in ``[0, 2]``.
        warp: ``"yeo_johnson"`` (default), ``"identity"`` (exactly BatchNorm) or a
            :class:`~lightning_dnn_tricks.nn.bnsr_warps.Warp`.
        newton_steps: Newton steps on ``lam`` toward zero batch skewness (``0`` to ``10``).
        include: regular expression on module names; only matching layers are replaced.
        exclude: regular expression on module names to leave out.
        compiled: run each layer's normalisation through ``torch.compile``: the same maths as
            fused kernels, about half the time per layer on CPU once compiled (the first steps
            compile; needs a C++ compiler on CPU).

    Returns:
        The :class:`~lightning_dnn_tricks.nn.surgery.SurgerySummary`; it warns (``TrickWarning``)
        when no layer matched.

    Raises:
        ValueError: an argument is out of range or of the wrong type (the message names it).
        TypeError: ``model`` is not an ``nn.Module``, or ``warp`` is neither a name nor a
            ``Warp``.

    Examples:
        >>> import timm
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=10)
        >>> print(apply_bnsr(model))
        bnsr: changed 20 layers (BatchNorm2d: 20)
        >>> print(apply_bnsr(model))
        bnsr: changed 0 layers; 20 already applied

    Note:
        BNSR's nonlinearity is our reconstruction of the paper (see its method card). The layers
        compute in float32 also in a model cast to float16/bfloat16, and pass an empty batch
        through like BatchNorm (see :class:`~lightning_dnn_tricks.nn.bnsr.BNSR1d`).
    """
    _check_model(model)
    built = check_bnsr_arguments(warp, alpha, newton_steps, include, exclude, compiled)
    summary = replace_batch_norms(model, built, include, exclude, compiled)
    summary.warn_if_empty("BNSR")
    return summary


def remove_bnsr(
    model: nn.Module, include: str | None = None, exclude: str | None = None
) -> SurgerySummary:
    """Turn BNSR layers back into the BatchNorm classes they replaced, in place.

    The parameters and BatchNorm running statistics are kept (shared); the warp's running
    averages are dropped. The result computes plain BatchNorm, which differs from the trained
    BNSR model unless its warp was the identity.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: ``include`` or ``exclude`` is not a valid regular expression.
    """
    _check_model(model)
    check_pattern("include", include)
    check_pattern("exclude", exclude)
    return restore_batch_norms(model, include=include, exclude=exclude)
