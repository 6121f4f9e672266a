"""timm-aware model surgery: swap modules or register parametrisations, idempotently, with a report.

Two operations change a model's structure:

- :func:`replace_modules` swaps selected modules for new ones built from them (``build(old)``),
  keeping device, dtype and training mode; :func:`share_state` lets a builder reuse the old
  module's parameters, buffers and sub-modules (timm's fused activation and dropout included), so
  checkpoint keys and optimizer references stay valid.
- :func:`register_parametrization_on` registers a ``torch.nn.utils.parametrize`` parametrisation
  on selected modules (the original tensor keeps its identity).

Both take a *selection*: a :class:`LayerSelection` (module types matched with ``isinstance`` so
timm's subclasses are found, name patterns, classifier exclusion, a predicate), a predicate
``select(name, module) -> bool``, or an explicit list of
:class:`~lightning_dnn_tricks.nn.selection.SelectedLayer`. Both are idempotent: a module already
changed by the same operation is counted as "already applied" and left alone. Both return a
:class:`SurgerySummary` saying how many layers of which class changed, which were skipped and why,
and which parameters were replaced or added, for :func:`update_optimizer_params` when the surgery
runs after an optimizer was built.

Pure PyTorch: this module never imports Lightning.

Examples:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    >>> summary = replace_modules(
    ...     model, LayerSelection(types=(nn.BatchNorm2d,)), lambda bn: nn.GroupNorm(2, 8), tag="gn"
    ... )
    >>> print(summary)
    gn: changed 1 layer (BatchNorm2d: 1)
    >>> replace_modules(model, LayerSelection(types=(nn.GroupNorm,)), lambda m: m, tag="gn").changed
    {}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_dnn_tricks.nn.selection import (
    WEIGHT_LAYER_TYPES,
    SelectedLayer,
    check_pattern,
    select_layers,
)
from lightning_dnn_tricks.nn.surgery_summary import (
    SkippedLayer,
    SurgerySummary,
    class_name,
    update_optimizer_params,
)
from lightning_dnn_tricks.validation import check_bool, check_text

__all__ = [
    "LayerSelection",
    "Selection",
    "SkippedLayer",
    "SurgerySummary",
    "applied_tags",
    "class_name",
    "register_parametrization_on",
    "replace_modules",
    "resolve_selection",
    "share_state",
    "update_optimizer_params",
]

# Attribute holding the tags of the surgeries that produced or changed a module.
_TAGS_ATTRIBUTE = "_ldt_surgery_tags"


@dataclass(frozen=True)
class LayerSelection:
    """Arguments of :func:`~lightning_dnn_tricks.nn.selection.select_layers`, bundled.

    Attributes:
        types: module classes to match (``isinstance``: subclasses included).
        include: regular expression; keep modules whose qualified name matches.
        exclude: regular expression; drop modules whose qualified name matches.
        exclude_classifier: drop the model's final classifier layer.
        predicate: a further filter ``predicate(name, module) -> bool``.
    """

    types: Sequence[type[nn.Module]] = WEIGHT_LAYER_TYPES
    include: str | None = None
    exclude: str | None = None
    exclude_classifier: bool = False
    predicate: Callable[[str, nn.Module], bool] | None = None

    def __post_init__(self) -> None:
        check_pattern("include", self.include)
        check_pattern("exclude", self.exclude)
        check_bool("exclude_classifier", self.exclude_classifier)
        if self.predicate is not None and not callable(self.predicate):
            raise TypeError(f"`predicate` must be callable or None, got {self.predicate!r}.")

    def select(self, model: nn.Module) -> list[SelectedLayer]:
        """The selected layers of ``model`` in registration order."""
        return select_layers(
            model,
            types=self.types,
            include=self.include,
            exclude=self.exclude,
            exclude_classifier=self.exclude_classifier,
            predicate=self.predicate,
        )


Selection = LayerSelection | Callable[[str, nn.Module], bool] | Iterable[SelectedLayer]


def resolve_selection(model: nn.Module, select: Selection) -> list[SelectedLayer]:
    """The layers ``select`` designates in ``model`` (each module once, registration order)."""
    if isinstance(select, LayerSelection):
        return select.select(model)
    if callable(select):
        return [
            SelectedLayer(name, module)
            for name, module in model.named_modules()
            if select(name, module)
        ]
    return list(select)


def applied_tags(module: nn.Module) -> frozenset[str]:
    """Tags of the surgeries that produced or changed ``module``."""
    return frozenset(getattr(module, _TAGS_ATTRIBUTE, ()))


def _mark_applied(module: nn.Module, tag: str) -> None:
    object.__setattr__(module, _TAGS_ATTRIBUTE, applied_tags(module) | {tag})


def share_state(source: nn.Module, target: nn.Module) -> nn.Module:
    """Make ``target`` use ``source``'s parameters, buffers and sub-modules (same objects).

    Entries are matched by name; ``target`` keeps those ``source`` does not have. Sharing the
    parameter objects keeps optimizer references and checkpoint keys valid, and sharing the
    sub-modules keeps timm's fused activation and dropout (``BatchNormAct2d.act``/``.drop``).

    Returns:
        ``target``, for use as the last line of a builder.
    """
    for name, parameter in source._parameters.items():
        target._parameters[name] = parameter
    for name, buffer in source._buffers.items():
        target._buffers[name] = buffer
        if name in source._non_persistent_buffers_set:
            target._non_persistent_buffers_set.add(name)
    for name, child in source._modules.items():
        target._modules[name] = child
    return target


def _first_float_tensor(module: nn.Module) -> Tensor | None:
    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    tensors += [*module.parameters(), *module.buffers()]
    return next((t for t in tensors if t.is_floating_point()), None)


def _replace_everywhere(model: nn.Module, replacements: Mapping[int, nn.Module]) -> None:
    # A module registered under several names (shared) is replaced under all of them.
    for parent in model.modules():
        for child_name, child in parent._modules.items():
            if child is not None and id(child) in replacements:
                parent._modules[child_name] = replacements[id(child)]


def _replaced_and_added(old: nn.Module, new: nn.Module, summary: SurgerySummary) -> None:
    old_params = dict(old.named_parameters())
    old_ids = {id(p) for p in old_params.values()}
    anchor = next(iter(old_params.values()), None)
    for name, parameter in new.named_parameters():
        if id(parameter) in old_ids:
            continue
        previous = old_params.get(name)
        if previous is not None:
            summary.replaced_parameters[previous] = parameter
        elif anchor is not None:
            summary.added_parameters.setdefault(anchor, []).append(parameter)


def _skipped(
    summary: SurgerySummary,
    skip: Callable[[str, nn.Module], str | None] | None,
    name: str,
    module: nn.Module,
) -> bool:
    """Record and report whether ``skip`` gives a reason to leave ``module`` alone."""
    reason = skip(name, module) if skip is not None else None
    if reason is not None:
        summary.skip(name, module, reason)
    return reason is not None


def replace_modules(
    model: nn.Module,
    select: Selection,
    build: Callable[[nn.Module], nn.Module],
    *,
    tag: str = "replace_modules",
    skip: Callable[[str, nn.Module], str | None] | None = None,
    is_applied: Callable[[nn.Module], bool] | None = None,
) -> SurgerySummary:
    """Swap every selected module of ``model`` for ``build(module)``, in place.

    The new module is moved to the old one's device and floating dtype and given its training
    mode. ``build`` should carry the old module's state over (see :func:`share_state`, or copy
    the tensors); parameters whose objects changed are reported in
    ``summary.replaced_parameters`` and new ones in ``summary.added_parameters``. A module shared
    under several names is replaced once, under all of them.

    Args:
        model: the model to change in place (the root module itself is never replaced).
        select: a :class:`LayerSelection`, a predicate ``(name, module) -> bool`` or a list of
            :class:`~lightning_dnn_tricks.nn.selection.SelectedLayer`.
        build: returns the replacement of a module.
        tag: the surgery's name; replacements are marked with it, so a second call with the same
            tag finds them "already applied" (idempotence).
        skip: returns a reason to leave a selected module alone, or ``None`` to change it.
        is_applied: a custom test for "this module was already changed by this surgery"
            (default: it carries ``tag``; see :func:`applied_tags`).

    Returns:
        The :class:`SurgerySummary` of this call.

    Raises:
        TypeError: ``build`` returned something other than an ``nn.Module``.
    """
    check_text("tag", tag, optional=False)
    summary = SurgerySummary(tag=tag)
    replacements: dict[int, nn.Module] = {}
    for layer in resolve_selection(model, select):
        name, module = layer.name, layer.module
        if module is model:
            summary.skip(name or "<root>", module, "the root module cannot be replaced")
            continue
        if tag in applied_tags(module) or (is_applied is not None and is_applied(module)):
            summary.already_applied.append(name)
            continue
        if _skipped(summary, skip, name, module):
            continue
        new = build(module)
        if not isinstance(new, nn.Module):
            raise TypeError(f"`build` must return an nn.Module, got {type(new).__name__}.")
        reference = _first_float_tensor(module)
        if reference is not None:
            new.to(device=reference.device, dtype=reference.dtype)
        new.train(module.training)
        _mark_applied(new, tag)
        _replaced_and_added(module, new, summary)
        replacements[id(module)] = new
        summary.record_change(name, module)
    _replace_everywhere(model, replacements)
    return summary


def register_parametrization_on(
    model: nn.Module,
    layers: Selection,
    make_parametrization: Callable[[nn.Module], nn.Module],
    *,
    tensor_name: str = "weight",
    tag: str | None = None,
    skip: Callable[[str, nn.Module], str | None] | None = None,
) -> SurgerySummary:
    """Register ``make_parametrization(module)`` on ``module.<tensor_name>`` of each selected layer.

    The original tensor keeps its identity (it moves to
    ``module.parametrizations.<tensor_name>.original``), so an optimizer built earlier still
    updates it; the parametrisation's own parameters are reported in
    ``summary.added_parameters``, keyed by that tensor. A layer whose ``tensor_name`` already
    carries a parametrisation of the same class counts as "already applied" (idempotence); one
    without a ``tensor_name`` tensor is skipped with a reason.

    Args:
        model: the model to change in place.
        layers: a :class:`LayerSelection`, a predicate ``(name, module) -> bool`` or a list of
            :class:`~lightning_dnn_tricks.nn.selection.SelectedLayer`.
        make_parametrization: builds the parametrisation module for one layer.
        tensor_name: the parametrised tensor (default ``"weight"``).
        tag: the surgery's name in the summary (default: the parametrisation's class name).
        skip: returns a reason to leave a selected module alone, or ``None`` to change it.

    Returns:
        The :class:`SurgerySummary` of this call (class names are those before the change).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> class Double(nn.Module):
        ...     def forward(self, w: torch.Tensor) -> torch.Tensor:
        ...         return 2 * w
        >>> model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 2))
        >>> print(register_parametrization_on(model, LayerSelection(), lambda m: Double()))
        Double: changed 2 layers (Conv2d: 1, Linear: 1)
        >>> print(register_parametrization_on(model, LayerSelection(), lambda m: Double()))
        Double: changed 0 layers; 2 already applied
    """
    check_text("tensor_name", tensor_name, optional=False)
    check_text("tag", tag)
    summary = SurgerySummary(tag=tag or "")
    for layer in resolve_selection(model, layers):
        name, module = layer.name, layer.module
        tensor = getattr(module, tensor_name, None)
        if not isinstance(tensor, Tensor):
            summary.skip(name, module, f"has no `{tensor_name}` tensor")
            continue
        if _skipped(summary, skip, name, module):
            continue
        parametrization = make_parametrization(module)
        summary.tag = summary.tag or type(parametrization).__name__
        if parametrize.is_parametrized(module, tensor_name) and any(
            type(existing) is type(parametrization)
            for existing in module.parametrizations[tensor_name]  # type: ignore[index]
        ):
            summary.already_applied.append(name)
            continue
        summary.record_change(name, module)
        parametrization.to(device=tensor.device)
        parametrize.register_parametrization(module, tensor_name, parametrization)
        original = module.parametrizations[tensor_name].original  # type: ignore[union-attr,index]
        new_parameters = list(parametrization.parameters())
        if new_parameters and isinstance(original, nn.Parameter):
            summary.added_parameters.setdefault(original, []).extend(new_parameters)
    summary.tag = summary.tag or "register_parametrization_on"
    return summary
