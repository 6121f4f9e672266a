"""Choosing which layers a trick acts on: by module type, name pattern and classifier exclusion.

Matching uses ``isinstance`` so timm's subclasses (``StdConv2d``, ``timm.layers.Linear``,
``BatchNormAct2d``...) are found like the torch layers they extend.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn
from torch.nn.utils import parametrize

from lightning_dnn_tricks.validation import check_bool, check_text

WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.Linear,
)


@dataclass(frozen=True)
class SelectedLayer:
    """One selected module and its qualified name in the model."""

    name: str
    module: nn.Module


def find_classifier(model: nn.Module) -> nn.Module | None:
    """The model's final classifier layer, or ``None`` when it has no linear layer.

    Uses timm's ``get_classifier()`` on the model or any sub-module (so a LightningModule that
    wraps a timm backbone is covered); otherwise the last ``nn.Linear`` registered in the model.
    """
    for module in model.modules():
        get_classifier = getattr(module, "get_classifier", None)
        if callable(get_classifier):
            classifier = get_classifier()
            if isinstance(classifier, nn.Module) and any(True for _ in classifier.parameters()):
                return classifier
    last_linear: nn.Module | None = None
    for module in model.modules():
        if isinstance(module, nn.Linear):
            last_linear = module
    return last_linear


def select_layers(
    model: nn.Module,
    types: Sequence[type[nn.Module]] = WEIGHT_LAYER_TYPES,
    include: str | None = None,
    exclude: str | None = None,
    exclude_classifier: bool = False,
    predicate: Callable[[str, nn.Module], bool] | None = None,
) -> list[SelectedLayer]:
    """Modules of ``model`` that are instances of ``types`` and pass the name filters.

    Args:
        model: the model to search.
        types: module classes to match (subclasses included).
        include: regular expression; keep modules whose qualified name matches (``re.search``).
        exclude: regular expression; drop modules whose qualified name matches.
        exclude_classifier: drop the layer returned by :func:`find_classifier`.
        predicate: a further filter called as ``predicate(name, module)``.

    Returns:
        The selected layers in registration order; each module appears once.
    """
    check_pattern("include", include)
    check_pattern("exclude", exclude)
    check_bool("exclude_classifier", exclude_classifier)
    include_re = re.compile(include) if include else None
    exclude_re = re.compile(exclude) if exclude else None
    classifier = find_classifier(model) if exclude_classifier else None
    wanted = tuple(types)
    selected = []
    for name, module in model.named_modules(remove_duplicate=True):
        if not _is_instance(module, wanted) or module is classifier:
            continue
        if include_re is not None and not include_re.search(name):
            continue
        if exclude_re is not None and exclude_re.search(name):
            continue
        if predicate is not None and not predicate(name, module):
            continue
        selected.append(SelectedLayer(name, module))
    return selected


def _is_instance(module: nn.Module, types: tuple[type[nn.Module], ...]) -> bool:
    return isinstance(module, types)


def check_pattern(argument: str, pattern: str | None) -> None:
    """Raise ``ValueError``/``TypeError`` naming ``argument`` unless ``pattern`` is ``None`` or a
    valid regular expression."""
    check_text("argument", argument, optional=False)
    check_text(argument, pattern)
    if pattern is None:
        return
    try:
        re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f"`{argument}` must be a valid regular expression, got {pattern!r}: {error}."
        ) from None


@dataclass(frozen=True)
class SelectedWeight:
    """One selected weight: the trainable tensor behind a layer's ``weight``.

    Attributes:
        name: the tensor's qualified name in the model's ``state_dict``.
        tensor: the parameter itself (the raw tensor when the weight is computed from one).
        module: the layer that owns the weight.
        computed: the layer computes its ``weight`` from ``tensor`` in each forward pass (a
            ``torch.nn.utils.parametrize`` parametrisation such as WeightAlign's, or
            ``torch.nn.utils.prune``'s ``weight_orig * weight_mask``).
    """

    name: str
    tensor: nn.Parameter
    module: nn.Module
    computed: bool


def raw_weight(module: nn.Module) -> tuple[str, nn.Parameter, bool] | None:
    """The trainable tensor behind ``module.weight``: ``(attribute path, tensor, computed)``.

    The rule, written down once for every trick: a parametrised weight
    (``parametrize.register_parametrization``, e.g. WeightAlign) is its
    ``parametrizations.weight.original``; a weight pruned with ``torch.nn.utils.prune`` (e.g.
    Lightning's ``ModelPruning``) is its ``weight_orig``; otherwise the ``weight`` parameter.
    ``None`` when the module has no such parameter.
    """
    if parametrize.is_parametrized(module, "weight"):
        original = module.parametrizations.weight.original  # type: ignore[union-attr]
        if isinstance(original, nn.Parameter):
            return "parametrizations.weight.original", original, True
        return None
    pruned = module._parameters.get("weight_orig")
    if isinstance(pruned, nn.Parameter):
        return "weight_orig", pruned, True
    weight = module._parameters.get("weight")
    return ("weight", weight, False) if isinstance(weight, nn.Parameter) else None


def select_weights(
    model: nn.Module,
    types: Sequence[type[nn.Module]] = WEIGHT_LAYER_TYPES,
    include: str | None = None,
    exclude: str | None = None,
    exclude_classifier: bool = False,
) -> list[SelectedWeight]:
    """The weights (dim >= 2) of the layers :func:`select_layers` picks, by :func:`raw_weight`.

    A tensor shared by several layers (tied weights) appears once, under its first name. Frozen
    tensors are selected too (a trick skips a tensor without a gradient at each step), so that a
    backbone unfrozen later in training (``BackboneFinetuning``) is covered.
    """
    selected: list[SelectedWeight] = []
    seen: set[int] = set()
    for layer in select_layers(model, types, include, exclude, exclude_classifier):
        found = raw_weight(layer.module)
        if found is None:
            continue
        path, tensor, computed = found
        if tensor.dim() < 2 or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        name = f"{layer.name}.{path}" if layer.name else path
        selected.append(SelectedWeight(name, tensor, layer.module, computed))
    return selected
