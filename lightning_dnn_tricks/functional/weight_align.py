"""WeightAlign (Shi et al., ICPR 2020, arXiv 2010.07160) as model surgery: apply, remove, fold.

Every selected conv (and, optionally, linear) weight ``W`` of shape ``(C_out, ...)``, fan-in
``N = W[i].numel()`` (``C_in/groups * k*k`` for a grouped or depthwise 2d conv), is replaced in
every forward pass by::

    W_hat_i = gamma_i * (W_i - mu_i) / (sqrt(N) * sigma_i + eps)

with the mean ``mu_i`` and population standard deviation ``sigma_i`` of filter ``i`` and a learnable
per-filter gain ``gamma_i`` (see
:class:`~lightning_dnn_tricks.nn.weight_align.WeightAlignParametrization`). No sample
statistics are involved, so the layer behaves the same at any batch size. Pure PyTorch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from torch.nn.utils import parametrize

from lightning_dnn_tricks.nn.selection import check_pattern
from lightning_dnn_tricks.nn.surgery import (
    LayerSelection,
    SurgerySummary,
    register_parametrization_on,
)
from lightning_dnn_tricks.nn.weight_align import (
    DEFAULT_EPS,
    DEFAULT_GAIN,
    is_weight_aligned,
    standardises_weight,
    weight_align_parametrization,
)
from lightning_dnn_tricks.validation import check_bool, check_number

__all__ = [
    "DEFAULT_LAYER_TYPES",
    "FAN_IN_REASON",
    "apply_weight_align",
    "check_weight_align_arguments",
    "fold_weight_align",
    "remove_weight_align",
]

DEFAULT_LAYER_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d)

STANDARDISED_REASON = "already standardises its weight (timm StdConv2d family)"
FAN_IN_REASON = "fan-in {fan_in} < 2: each filter is identically zero after centring (dead layer)"


def check_weight_align_arguments(
    layer_types: Sequence[type[nn.Module]],
    include: str | None,
    exclude: str | None,
    gain: float,
    eps: float,
    include_linear: bool = False,
    exclude_classifier: bool = True,
) -> None:
    """Raise ``ValueError`` naming the first out-of-range WeightAlign argument."""
    if (
        isinstance(layer_types, str | type)
        or not isinstance(layer_types, Sequence)
        or not layer_types
        or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types)
    ):
        raise ValueError(
            f"`layer_types` must be a non-empty sequence of nn.Module classes, got {layer_types!r}."
        )
    check_bool("include_linear", include_linear)
    check_bool("exclude_classifier", exclude_classifier)
    check_pattern("include", include)
    check_pattern("exclude", exclude)
    check_number("gain", gain, low=0.0, low_inclusive=False)
    check_number("eps", eps, low=0.0)


def _check_model(model: nn.Module) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")


def _skip_reason(name: str, module: nn.Module) -> str | None:
    weight = getattr(module, "weight", None)
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return "lazy module with an uninitialised weight (run one forward pass first)"
    if weight is None or weight.dim() < 2:
        return "weight has fewer than 2 dimensions"
    if standardises_weight(module):
        return STANDARDISED_REASON
    if weight.shape[0] == 0:
        return "weight has no filters (0 output channels)"
    fan_in = weight[0].numel()
    if fan_in < 2:
        return FAN_IN_REASON.format(fan_in=fan_in)
    return None


def apply_weight_align(
    model: nn.Module,
    layer_types: Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES,
    include_linear: bool = False,
    exclude_classifier: bool = True,
    include: str | None = None,
    exclude: str | None = None,
    gain: float = DEFAULT_GAIN,
    eps: float = DEFAULT_EPS,
) -> SurgerySummary:
    """Register WeightAlign on the weight of every selected layer of ``model``, in place.

    Layers are matched with ``isinstance`` (timm's subclasses included). Layers that already
    standardise their weight (timm ``StdConv2d``, ``ScaledStdConv2d``, their ``*Same`` variants and
    subclasses) are skipped, with that reason in the summary. So are layers whose filters have a
    fan-in below 2 (``Linear(1, n)``, a depthwise 1x1 conv ``Conv2d(c, c, 1, groups=c)``): a
    single centred weight is identically zero, so aligning would leave a dead layer (zero weight,
    zero gradients); they stay untouched, with the fan-in in the summary's reason. Applying twice
    equals applying once: aligned layers count as "already applied". The raw weights keep their
    identity (an optimizer built earlier still holds them); the new gains are listed in
    ``summary.added_parameters`` (``summary.update_optimizer(optimizer)`` adds them to an
    existing optimizer).

    Args:
        model: the model to change in place.
        layer_types: module classes to align (default ``Conv1d`` and ``Conv2d``; grouped and
            depthwise convs included).
        include_linear: also align ``nn.Linear`` layers (timm's ``Linear`` included).
        exclude_classifier: leave the model's final classifier alone (timm's
            ``get_classifier()``, else the last ``nn.Linear``).
        include: regular expression; only layers whose qualified name matches are aligned.
        exclude: regular expression; layers whose qualified name matches are left alone.
        gain: initial value of the learnable per-filter gain ``gamma`` (``> 0``; ``sqrt(2)``).
        eps: added to ``sqrt(N) * sigma`` (``>= 0``).

    Returns:
        The :class:`~lightning_dnn_tricks.nn.surgery.SurgerySummary` (print it for a report).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``model`` is not an ``nn.Module``, or a flag is not a bool.

    Examples:
        >>> import timm
        >>> model = timm.create_model("resnet18", pretrained=False, num_classes=10)
        >>> print(apply_weight_align(model))
        WeightAlign: changed 20 layers (Conv2d: 20)
        >>> print(apply_weight_align(model))
        WeightAlign: changed 0 layers; 20 already applied

    Note:
        ``gain = sqrt(2)`` and ``eps = 1e-5`` are our reconstruction of the paper's constants
        (see its method card). With ``gain = sqrt(N)`` and ``eps = 0`` a layer computes exactly what
        timm's ``StdConv2d`` with ``eps = 0`` computes.
    """
    _check_model(model)
    check_weight_align_arguments(
        layer_types, include, exclude, gain, eps, include_linear, exclude_classifier
    )
    types = (*layer_types, nn.Linear) if include_linear else tuple(layer_types)
    selection = LayerSelection(
        types=types, include=include, exclude=exclude, exclude_classifier=exclude_classifier
    )
    return register_parametrization_on(
        model,
        selection,
        lambda module: weight_align_parametrization(module, gain, eps),
        tag="WeightAlign",
        skip=_skip_reason,
    )


def _unshare_class(module: nn.Module) -> None:
    # ``parametrize`` keeps the parametrised tensor as a property of a class made for the module,
    # and removal deletes it from that class. A deep copy shares the class with the original:
    # give this module its own copy of the class so removal leaves the other copies intact.
    cls = type(module)
    module.__class__ = type(cls.__name__, cls.__bases__, dict(cls.__dict__))


def remove_weight_align(model: nn.Module) -> SurgerySummary:
    """Bake ``W_hat`` into a plain ``weight`` on every aligned layer of ``model``, in place.

    Each layer gets back its original class (e.g. ``nn.Conv2d``) with ``weight`` holding the
    current aligned weight (the same parameter object as the raw weight, so an optimizer keeps
    its reference); the gains are dropped. A layer whose weight carries other parametrisations as
    well is skipped, with that reason.

    Returns:
        A :class:`~lightning_dnn_tricks.nn.surgery.SurgerySummary` of the layers restored.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 1))
        >>> _ = apply_weight_align(model, exclude_classifier=False)
        >>> print(remove_weight_align(model))
        remove WeightAlign: changed 2 layers (Conv2d: 2)
        >>> type(model[0]).__name__
        'Conv2d'
    """
    _check_model(model)
    summary = SurgerySummary(tag="remove WeightAlign")
    for name, module in list(model.named_modules()):
        if not is_weight_aligned(module):
            continue
        if len(module.parametrizations["weight"]) > 1:
            summary.skip(name, module, "its weight carries other parametrisations too")
            continue
        _unshare_class(module)
        parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
        summary.record_change(name, module)
    return summary


def fold_weight_align(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with WeightAlign folded into plain layers, for inference and export.

    ``model`` itself is not changed. The copy computes the same outputs as ``model`` (in eval
    mode, bit for bit: the folded weight is the aligned weight ``model`` computes), without the
    per-forward cost of the parametrisation and with plain ``state_dict`` keys (``weight``).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.

    Examples:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()
        >>> _ = apply_weight_align(model, exclude_classifier=False)
        >>> folded = fold_weight_align(model)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.equal(folded(x), model(x)), sorted(folded.state_dict())
        (True, ['0.bias', '0.weight'])
    """
    _check_model(model)
    folded = copy.deepcopy(model)
    remove_weight_align(folded)
    return folded
