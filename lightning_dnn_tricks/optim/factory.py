"""``create_optimizer``: this library's optimizers by name, with timm-style param groups.

Pure torch; timm is imported only when a name is not ours and is handed to timm's factory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn
from torch.optim import Optimizer

from lightning_dnn_tricks.optim.frank_wolfe import FrankWolfe
from lightning_dnn_tricks.optim.sgdg2 import SGDG2, SRK2


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: its class and a one-line description."""

    name: str
    cls: Callable[..., Optimizer]
    description: str


_OPTIMIZERS: dict[str, OptimizerEntry] = {}
_ALIASES: dict[str, str] = {}


def register_optimizer(entry: OptimizerEntry, aliases: Iterable[str] = ()) -> None:
    """Make ``entry`` (and its ``aliases``) available to :func:`create_optimizer`."""
    name = entry.name.lower()
    if name in _ALIASES:
        raise ValueError(f"{name!r} is already registered as an alias of {_ALIASES[name]!r}.")
    _OPTIMIZERS[name] = entry
    for alias in aliases:
        _ALIASES[alias.lower()] = name


register_optimizer(
    OptimizerEntry("sgdg2", SGDG2, "SGD-G2: adaptive step size from a second gradient")
)
register_optimizer(OptimizerEntry("srk2", SRK2, "stochastic Runge-Kutta (Heun) step, fixed lr"))
register_optimizer(
    OptimizerEntry("frank_wolfe", FrankWolfe, "FW-RNN: Frank-Wolfe inner loop around Adam"),
    aliases=("fw", "frankwolfe"),
)


def list_optimizers(include_aliases: bool = False) -> list[str]:
    """Names :func:`create_optimizer` accepts (this library's; timm's names are also accepted).

    Examples:
        >>> list_optimizers()
        ['frank_wolfe', 'sgdg2', 'srk2']
    """
    names = set(_OPTIMIZERS) | (set(_ALIASES) if include_aliases else set())
    return sorted(names)


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """Two param groups as timm makes them: no weight decay on biases, norm and 1-d parameters.

    A trainable parameter goes to the ``weight_decay=0`` group when it has at most one dimension
    (biases, norm scales and shifts), its name ends in ``.bias``, or its name matches one of
    ``no_weight_decay`` (exact names or regular expressions; the model's own
    ``no_weight_decay()`` set, as timm models define it, is added).

    Examples:
        >>> groups = param_groups_weight_decay(torch.nn.Linear(3, 2), 0.1)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.0), (1, 0.1)]
    """
    skip = set(no_weight_decay)
    own = getattr(model, "no_weight_decay", None)
    if callable(own):
        skip |= set(own())
    patterns = [re.compile(name) for name in skip]
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        exempt = (
            param.ndim <= 1 or name.endswith(".bias") or any(p.fullmatch(name) for p in patterns)
        )
        (no_decay if exempt else decay).append(param)
    return [
        {"params": no_decay, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
    ]


def create_optimizer(
    model_or_params: nn.Module | Iterable[Any],
    name: str,
    weight_decay: float = 0.0,
    no_weight_decay: Iterable[str] = (),
    **kwargs: Any,
) -> Optimizer:
    """Build an optimizer by name, with timm-style param groups when given a model.

    Our names (:func:`list_optimizers`: ``sgdg2``, ``srk2``, ``frank_wolfe`` alias ``fw`` and
    ``frankwolfe``) build this library's classes. Any other name is handed to
    ``timm.optim.create_optimizer_v2`` (``adamw``, ``sgd``, ``lamb``...), so one factory reaches
    both. With a module and ``weight_decay > 0``, biases, norm and other 1-d parameters get no
    weight decay (:func:`param_groups_weight_decay`); for :class:`~.FrankWolfe` the decay is the
    base optimizer's.

    Args:
        model_or_params: a module, or parameters / param groups passed through as they are.
        name: optimizer name, case-insensitive.
        weight_decay: weight decay of the decayed group (>= 0).
        no_weight_decay: extra parameter names (or regular expressions) without weight decay.
        **kwargs: the optimizer's own arguments (``lr``, ``inner_steps``...).

    Raises:
        ValueError: unknown ``name`` (the message lists ours), or an invalid argument.

    Examples:
        >>> import torch
        >>> opt = create_optimizer(torch.nn.Linear(3, 1), "fw", lr=1e-3, inner_steps=10)
        >>> type(opt).__name__, opt.param_groups[0]["inner_steps"]
        ('FrankWolfe', 10)

    Note:
        timm offers no public way to add names to the registry behind its own
        ``create_optimizer_v2`` (its default registry lives in the private module
        ``timm.optim._optim_factory``), so ``timm.optim.create_optimizer_v2("sgdg2")`` does not
        work; call this function instead, which accepts timm's names too.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")
    if (
        isinstance(weight_decay, bool)
        or not isinstance(weight_decay, int | float)
        or weight_decay < 0
    ):
        raise ValueError(f"`weight_decay` must be a number >= 0, got {weight_decay!r}.")
    key = _ALIASES.get(name.lower(), name.lower())
    entry = _OPTIMIZERS.get(key)
    if entry is None:
        return _create_timm_optimizer(model_or_params, name, weight_decay, no_weight_decay, kwargs)
    params: Any = model_or_params
    if isinstance(model_or_params, nn.Module):
        params = param_groups_weight_decay(model_or_params, weight_decay, no_weight_decay)
        if weight_decay == 0:
            params = [p for group in params for p in group["params"]]
    elif weight_decay:
        kwargs = {**kwargs, "weight_decay": weight_decay}
    if entry.cls is FrankWolfe:
        params = _move_weight_decay_to_base(params, kwargs)
    return entry.cls(params, **kwargs)


def _move_weight_decay_to_base(params: Any, kwargs: dict[str, Any]) -> Any:
    """FrankWolfe passes weight decay to its base optimizer (groups keep theirs)."""
    decay = kwargs.pop("weight_decay", None)
    if decay is not None:
        kwargs["base_kwargs"] = {**(kwargs.get("base_kwargs") or {}), "weight_decay": decay}
    return params


def _create_timm_optimizer(
    model_or_params: Any,
    name: str,
    weight_decay: float,
    no_weight_decay: Iterable[str],
    kwargs: dict[str, Any],
) -> Optimizer:
    try:
        import timm.optim
    except ImportError:  # pragma: no cover - timm is a dependency of the package
        timm_names: list[str] = []
    else:
        timm_names = [str(n) for n in timm.optim.list_optimizers()]
    if name.lower() not in timm_names:
        raise ValueError(
            f"`name` must be one of {list_optimizers(include_aliases=True)} or a timm optimizer "
            f"name (timm.optim.list_optimizers()), got {name!r}."
        )
    if isinstance(model_or_params, nn.Module) and no_weight_decay:
        model_or_params = param_groups_weight_decay(model_or_params, weight_decay, no_weight_decay)
    optimizer: Optimizer = timm.optim.create_optimizer_v2(
        model_or_params, name, weight_decay=weight_decay, **kwargs
    )
    return optimizer


def optimizer_class(name: str) -> Callable[..., Optimizer]:
    """The class registered as ``name`` (or one of its aliases)."""
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _OPTIMIZERS:
        raise ValueError(
            f"`name` must be one of {list_optimizers(include_aliases=True)}, got {name!r}."
        )
    return _OPTIMIZERS[key].cls
