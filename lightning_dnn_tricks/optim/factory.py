"""``create_optimizer``: this library's optimizers by name, with timm-style param groups.

Pure torch at import; timm is imported when a call needs it: a name that is not ours (handed to
timm's factory), or a module whose param groups timm's helper splits.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer

from lightning_dnn_tricks.optim._common import check_like_defaults
from lightning_dnn_tricks.optim.frank_wolfe import FrankWolfe
from lightning_dnn_tricks.optim.sgdg2 import SGDG2, SRK2
from lightning_dnn_tricks.validation import check_bool, check_number


@dataclass(frozen=True)
class OptimizerEntry:
    """A registered optimizer: its class and a one-line description.

    Raises:
        ValueError: ``name`` is not a non-empty string.
        TypeError: ``cls`` is not callable or ``description`` is not a string.
    """

    name: str
    cls: Callable[..., Optimizer]
    description: str

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"`name` must be a non-empty string, got {self.name!r}.")
        if not callable(self.cls):
            raise TypeError(f"`cls` must be an optimizer class (callable), got {self.cls!r}.")
        if not isinstance(self.description, str):
            raise TypeError(f"`description` must be a string, got {self.description!r}.")


def _names(argument: str, value: Any, what: str) -> list[str]:
    """``value`` as a list of strings, refusing one bare string (it would iterate its letters)."""
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"`{argument}` must be an iterable of {what} (a list), got {value!r}.")
    names = list(value)
    for name in names:
        if not isinstance(name, str) or not name:
            raise TypeError(f"`{argument}` must hold non-empty strings ({what}), got {name!r}.")
    return names


def _patterns(no_weight_decay: Any) -> list[re.Pattern[str]]:
    patterns = []
    for name in _names("no_weight_decay", no_weight_decay, "parameter names or regexes"):
        try:
            patterns.append(re.compile(name))
        except re.error as error:
            raise ValueError(
                f"`no_weight_decay`: {name!r} is not a regular expression ({error})."
            ) from None
    return patterns


_OPTIMIZERS: dict[str, OptimizerEntry] = {}
_ALIASES: dict[str, str] = {}


def register_optimizer(entry: OptimizerEntry, aliases: Iterable[str] = ()) -> None:
    """Make ``entry`` (and its ``aliases``) available to :func:`create_optimizer`.

    Registering a name again with the same class replaces its description.

    Raises:
        TypeError: ``entry`` is not an :class:`OptimizerEntry`, or ``aliases`` is not an
            iterable of non-empty strings (one bare string is refused).
        ValueError: the name or an alias is already taken by another optimizer.
    """
    if not isinstance(entry, OptimizerEntry):
        raise TypeError(f"`entry` must be an OptimizerEntry, got {entry!r}.")
    names = [alias.lower() for alias in _names("aliases", aliases, "alternative names")]
    name = entry.name.lower()
    if name in _ALIASES:
        raise ValueError(f"`entry`: {name!r} is already an alias of {_ALIASES[name]!r}.")
    if name in _OPTIMIZERS and _OPTIMIZERS[name].cls is not entry.cls:
        raise ValueError(
            f"`entry`: {name!r} is already registered for {_OPTIMIZERS[name].cls!r}; choose "
            "another name."
        )
    for alias in names:
        taken = alias in _OPTIMIZERS and alias != name
        if taken or _ALIASES.get(alias, name) != name:
            owner = alias if taken else _ALIASES[alias]
            raise ValueError(f"`aliases`: {alias!r} already names {owner!r}.")
    _OPTIMIZERS[name] = entry
    for alias in names:
        _ALIASES[alias] = name


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
    check_bool("include_aliases", include_aliases)
    names = set(_OPTIMIZERS) | (set(_ALIASES) if include_aliases else set())
    return sorted(names)


def param_groups_weight_decay(
    model: nn.Module, weight_decay: float, no_weight_decay: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """timm's param groups (``timm.optim.param_groups_weight_decay``), with regex exemptions.

    timm's helper does the split: a trainable parameter gets ``weight_decay=0`` when it has at
    most one dimension (biases, norm scales and shifts), its name ends in ``.bias`` or it is in
    the no-decay list; frozen parameters are left out. It returns the no-decay group, then the
    decayed one, and leaves out a group that would be empty (with ``weight_decay=0``, one group
    holds every parameter). This wrapper keeps two differences from calling it directly:

    - ``no_weight_decay`` holds regular expressions matched against whole parameter names (an
      exact name is one), as this library has always taken them; timm's list takes
      shell-style wildcards, so the names they match are handed to timm, not the patterns;
    - the model's own ``no_weight_decay()`` set, as timm models define it, is added to the
      list (timm's ``create_optimizer_v2`` does this, its helper does not), with timm's
      matching;

    and checks the arguments, which timm does not.

    Raises:
        TypeError: ``model`` is not a module, or ``no_weight_decay`` is not an iterable of
            strings (one bare string is refused: it would iterate its letters).
        ValueError: ``weight_decay`` is not a finite number >= 0, or a name is not a regex.

    Examples:
        >>> import torch
        >>> groups = param_groups_weight_decay(torch.nn.Linear(3, 2), 0.1)
        >>> [(len(g["params"]), g["weight_decay"]) for g in groups]
        [(1, 0.0), (1, 0.1)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be an nn.Module, got {type(model).__name__}.")
    check_number("weight_decay", weight_decay, low=0.0)
    patterns = _patterns(no_weight_decay)
    import timm.optim

    exempt = [
        name for name, _ in model.named_parameters() if any(p.fullmatch(name) for p in patterns)
    ]
    own = getattr(model, "no_weight_decay", None)
    if callable(own):
        exempt += list(own())
    groups: list[dict[str, Any]] = timm.optim.param_groups_weight_decay(
        model, weight_decay=weight_decay, no_weight_decay_list=exempt
    )
    return groups


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
        ValueError: unknown ``name`` (the message lists ours), or an invalid argument (NaN,
            inf, a bool for a number...; the message names it). ``kwargs`` of our optimizers
            are checked by them; for timm's, any float must be finite, ``lr`` >= 0, and a
            value whose default is a number must be one.
        TypeError: ``model_or_params`` is neither a module nor an iterable of parameters, or
            ``no_weight_decay`` is not an iterable of strings.

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
    if not isinstance(model_or_params, nn.Module) and (
        isinstance(model_or_params, torch.Tensor | str | bytes)
        or not isinstance(model_or_params, Iterable)
    ):
        raise TypeError(
            "`model_or_params` must be a module or an iterable of parameters / param groups, "
            f"got {model_or_params!r}."
        )
    _check_name(name)
    check_number("weight_decay", weight_decay, low=0.0)
    _patterns(no_weight_decay)
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
    if "lr" in kwargs and kwargs["lr"] is not None:
        check_number("lr", kwargs["lr"], low=0.0)
    check_like_defaults("", kwargs, timm.optim.get_optimizer_class(name, bind_defaults=False))
    if isinstance(model_or_params, nn.Module) and no_weight_decay:
        model_or_params = param_groups_weight_decay(model_or_params, weight_decay, no_weight_decay)
    optimizer: Optimizer = timm.optim.create_optimizer_v2(
        model_or_params, name, weight_decay=weight_decay, **kwargs
    )
    return optimizer


def _check_name(name: Any) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"`name` must be a non-empty string, got {name!r}.")


def optimizer_class(name: str) -> Callable[..., Optimizer]:
    """The class registered as ``name`` (or one of its aliases); any other name is looked up in
    timm's registry (``timm.optim.get_optimizer_class``), as :func:`create_optimizer` does.

    Raises:
        ValueError: ``name`` is not a string, or names no optimizer of ours or of timm.
    """
    _check_name(name)
    key = _ALIASES.get(name.lower(), name.lower())
    if key in _OPTIMIZERS:
        return _OPTIMIZERS[key].cls
    try:
        import timm.optim

        found: Callable[..., Optimizer] = timm.optim.get_optimizer_class(name)
    except (ImportError, ValueError):
        raise ValueError(
            f"`name` must be one of {list_optimizers(include_aliases=True)} or a timm optimizer "
            f"name (timm.optim.list_optimizers()), got {name!r}."
        ) from None
    return found
