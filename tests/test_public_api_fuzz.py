"""Fuzz over the whole public API: a bad value of any hyperparameter raises a clear error.

Every name in the ``__all__`` lists of the package and its sub-packages has a valid call in
``VALID_CALLS`` (or a reason in ``NOT_CALLABLE``); a public name without one fails
``test_every_public_name_is_fuzzed``. For each argument whose type is a number, a bool, a string
or a ``Literal`` of options, the fuzz replaces the valid value by bad ones (NaN, inf, a huge
integer, a bool for a number, a string for a number, a non-bool for a bool, an unknown option, a
broken regular expression) and calls again. The call must raise ``ValueError`` or ``TypeError``
whose message names the argument: a silent acceptance or an error that does not name the argument
is a failure.
"""

from __future__ import annotations

import importlib
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

MODULES = (
    "lightning_dnn_tricks",
    "lightning_dnn_tricks.callbacks",
    "lightning_dnn_tricks.data",
    "lightning_dnn_tricks.functional",
    "lightning_dnn_tricks.models",
    "lightning_dnn_tricks.nn",
    "lightning_dnn_tricks.optim",
)

#: Public names that take no hyperparameter to fuzz, and why.
NOT_CALLABLE = {
    "__version__": "a string",
    "WEIGHT_LAYER_TYPES": "a tuple of classes",
    "TrickConfigurationError": "an exception class",
    "TrickWarning": "a warning class",
    "TrickCallback": "the abstract base of the callbacks (no arguments)",
    "OptimizerSupport": "no arguments",
    "IdentityWarp": "no arguments",
    "Warp": "the abstract base of the warps (no arguments)",
    "ContractionReport": "a result record returned by contraction_check",
    "SparsityReport": "a result record returned by sparsity_report",
    "SpectralNormEstimate": "a result record returned by power_iteration",
    "SelectedLayer": "a result record returned by select_layers",
    "SkippedLayer": "a result record of a surgery summary",
    "SurgerySummary": "a result record returned by every surgery",
    "DatasetSplits": "a record of three datasets",
    "WeightOperator": "built by weight_operator (fuzzed there)",
    "InMemoryDataModule": "the abstract base of the data modules (its subclasses are fuzzed)",
    "is_importance_batch": "a predicate on any object",
    "register_optimizer": "registers a factory entry (its arguments are objects)",
}


def _net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3)
    )


def _rnn() -> nn.RNN:
    return nn.RNN(2, 3)


def _dataset() -> TensorDataset:
    return TensorDataset(torch.randn(8, 2), torch.randint(0, 2, (8,)))


def _importance_batch() -> dict[str, Any]:
    from lightning_dnn_tricks.data import importance_dataloader

    return next(iter(importance_dataloader(_dataset(), batch_size=4)))


def _operator() -> tuple[torch.Tensor, Any]:
    from lightning_dnn_tricks.functional import weight_operator

    weight = torch.randn(3, 2)
    return weight, weight_operator(weight)


def _estimate() -> tuple[torch.Tensor, Any, Any]:
    from lightning_dnn_tricks.functional import power_iteration

    weight, operator = _operator()
    return weight, operator, power_iteration(weight, operator, torch.randn(2), iterations=2)


Call = Callable[[], tuple[tuple[Any, ...], dict[str, Any]]]


def _built(value: Any) -> Any:
    is_builder = isinstance(value, types.LambdaType) and value.__name__ == "<lambda>"
    return value() if is_builder else value


def _args(*args: Any, **kwargs: Any) -> Call:
    """A valid call; every ``lambda`` among the values is a builder, called for each call."""
    return lambda: (tuple(_built(a) for a in args), {k: _built(v) for k, v in kwargs.items()})


def _weights() -> list[torch.Tensor]:
    return [torch.randn(4, 3, requires_grad=True)]


def _grad_weights() -> list[torch.Tensor]:
    weights = _weights()
    weights[0].grad = torch.zeros(4, 3)
    return weights


def _params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(3, 2))]


VALID_CALLS: dict[str, Call] = {
    # package
    "Capabilities": _args(),
    "TrickSpec": _args(name="x", kind="callback", import_path="a:b", summary="s", paper="p"),
    "get_trick": _args(name="norm_loss"),
    "list_tricks": _args(),
    # callbacks
    "BNSR": _args(),
    "AcceleratedIMP": _args(),
    "AdaptiveImportanceSampling": _args(),
    "IterativeMagnitudePruning": _args(),
    "NormGroup": _args(name="g"),
    "NormLoss": _args(),
    "StepTimer": _args(),
    "WeightAlign": _args(),
    "WeightNormSupervision": _args(),
    # data
    "AdaptiveImportanceSampler": _args(data_source=8, batch_size=2),
    "AddingProblemDataModule": _args(),
    "CopyMemoryDataModule": _args(),
    "DigitsDataModule": _args(),
    "DistributedAdaptiveImportanceSampler": _args(
        data_source=8, batch_size=2, num_replicas=2, rank=0
    ),
    "EpochSeededRandomSampler": _args(data_source=range(5)),
    "FashionMNISTDataModule": _args(),
    "ImportanceCollate": _args(),
    "IndexedDataset": _args(dataset=lambda: _dataset()),
    "MNIST1DDataModule": _args(),
    "ResumableDataLoader": _args(dataset=lambda: _dataset()),
    "importance_dataloader": _args(dataset=lambda: _dataset(), batch_size=2),
    "importance_sampler": _args(dataset=lambda: _dataset(), batch_size=2),
    "make_adding_problem": _args(num_examples=4, seq_len=5),
    "make_copy_memory": _args(num_examples=4, delay=3, copy_length=2, num_symbols=4),
    "require": _args(module_name="torch", feature="tests"),
    # functional
    "add_norm_loss_grad_": _args(weights=lambda: _grad_weights(), strength=0.1),
    "add_spectral_penalty_grad_": _args(
        weight=lambda: _estimate()[0],
        operator=lambda: _estimate()[1],
        estimate=lambda: _estimate()[2],
        bound=0.5,
        strength=0.1,
    ),
    "apply_bnsr": _args(model=lambda: _net()),
    "apply_decoupled_norm_loss_": _args(weights=lambda: _weights(), lrs=[0.1], strength=0.1),
    "apply_masks_": _args(tensors=lambda: _weights(), masks=lambda: [torch.ones(4, 3)]),
    "apply_masks_everywhere_": _args(params=lambda: _weights(), masks=lambda: [torch.ones(4, 3)]),
    "apply_weight_align": _args(model=lambda: _net()),
    "contraction_check": _args(
        step=lambda: lambda state, x: 0.5 * state + x,
        inputs=lambda: [torch.ones(2)] * 3,
        state_a=lambda: torch.zeros(2),
        state_b=lambda: torch.ones(2),
    ),
    "effective_sample_size": _args(weights=lambda: torch.ones(4)),
    "ess_fraction": _args(probabilities=lambda: torch.full((4,), 0.25)),
    "fold_weight_align": _args(model=lambda: _net()),
    "importance_probabilities": _args(scores=lambda: torch.ones(4)),
    "importance_weighted_mean": _args(
        losses=lambda: torch.ones(4), batch=lambda: _importance_batch()
    ),
    "importance_weights": _args(probabilities=lambda: torch.full((4,), 0.25)),
    "logit_grad_norm": _args(
        logits=lambda: torch.randn(4, 3), targets=lambda: torch.zeros(4).long()
    ),
    "magnitude_masks": _args(weights=lambda: _weights(), amount=0.5),
    "make_permanent": _args(model=lambda: _net()),
    "mask_gradients_": _args(params=lambda: _grad_weights(), masks=lambda: [torch.ones(4, 3)]),
    "mask_jaccard": _args(
        first=lambda: [torch.ones(4, 3, dtype=torch.bool)],
        second=lambda: [torch.ones(4, 3, dtype=torch.bool)],
    ),
    "mean_abs_norm_deviation": _args(norms=lambda: torch.ones(4)),
    "norm_loss": _args(weights=lambda: _weights()),
    "per_example_grad_norms": _args(
        model=lambda: nn.Linear(2, 2),
        loss_fn=lambda: nn.functional.cross_entropy,
        inputs=lambda: torch.randn(4, 2),
        targets=lambda: torch.zeros(4).long(),
    ),
    "power_iteration": _args(
        weight=lambda: _operator()[0], operator=lambda: _operator()[1], v=lambda: torch.randn(2)
    ),
    "project_spectral_norm_": _args(weight=lambda: torch.randn(3, 2), sigma=2.0, bound=1.0),
    "pruned_state_dict": _args(model=lambda: nn.Linear(2, 2), masks=lambda: {}),
    "remove_bnsr": _args(model=lambda: _net()),
    "remove_weight_align": _args(model=lambda: _net()),
    "rnn_step": _args(rnn=lambda: _rnn()),
    "row_norms": _args(weights=lambda: _weights()),
    "sparsity_report": _args(tensors=lambda: {"w": torch.ones(4, 3)}),
    "spectral_penalty": _args(sigmas=lambda: torch.ones(2), bound=0.5),
    "tanh_rnn_norms": _args(rnn=lambda: _rnn()),
    "target_sparsity": _args(amounts=[0.5, 0.5]),
    "weight_operator": _args(weight=lambda: torch.randn(3, 2)),
    "yeo_johnson": _args(x=lambda: torch.randn(4), lam=1.0),
    # models
    "PredictiveCodingNetwork": _args(),
    "SequenceModel": _args(),
    "TimmClassifier": _args(model_name="resnet18", num_classes=3),
    "adamw": _args(params=lambda: _params()),
    # nn
    "BNSR1d": _args(3),
    "BNSR2d": _args(3),
    "BNSRAct2d": _args(3),
    "LayerSelection": _args(),
    "WeightAlignParametrization": _args(out_channels=3),
    "YeoJohnsonWarp": _args(),
    "applied_tags": _args(module=lambda: _net()),
    "bnsr_class_for": _args(module=lambda: nn.BatchNorm2d(2)),
    "check_pattern": _args(argument="pattern", pattern="conv"),
    "find_classifier": _args(model=lambda: _net()),
    "is_weight_aligned": _args(module=lambda: nn.Conv2d(1, 1, 1)),
    "register_parametrization_on": _args(
        model=lambda: _net(), layers=lambda: [], make_parametrization=lambda: lambda m: None
    ),
    "replace_modules": _args(
        model=lambda: _net(), select=lambda: lambda name, m: False, build=lambda: lambda m: m
    ),
    "resolve_selection": _args(model=lambda: _net(), select=lambda: _default_selection()),
    "select_layers": _args(model=lambda: _net()),
    "share_state": _args(source=lambda: nn.Linear(2, 2), target=lambda: nn.Linear(2, 2)),
    "update_optimizer_params": _args(
        optimizer=lambda: torch.optim.SGD(_params(), lr=0.1), replaced=lambda: {}
    ),
    # optim
    "SGDG2": _args(params=lambda: _params()),
    "SRK2": _args(params=lambda: _params()),
    "FrankWolfe": _args(params=lambda: _params()),
    "create_optimizer": _args(model_or_params=lambda: nn.Linear(2, 2), name="adamw"),
    "list_optimizers": _args(),
    "optimizer_class": _args(name="sgdg2"),
    "param_groups_weight_decay": _args(model=lambda: nn.Linear(2, 2), weight_decay=0.01),
    "preserve_buffers": _args(module=lambda: nn.BatchNorm1d(2)),
}


def _default_selection() -> Any:
    from lightning_dnn_tricks.nn import LayerSelection

    return LayerSelection()


def public_names() -> dict[str, Any]:
    names: dict[str, Any] = {}
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            names.setdefault(name, getattr(module, name))
    return names


# -- bad values by the argument's type ----------------------------------------------------------
NUMBER_BAD = [math.nan, math.inf, -math.inf, 10**400, True, "1"]
INTEGER_BAD = [*NUMBER_BAD, 1.5]
BOOL_BAD = ["false", 1]
OPTION_BAD = ["no-such-option", 1]
TEXT_BAD = [1]
PATTERN_BAD = [1, "(unclosed"]


def _members(hint: Any) -> list[Any]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return [m for arg in typing.get_args(hint) for m in _members(arg)]
    return [hint]


def bad_values(name: str, hint: Any) -> list[Any]:
    """The bad values of an argument of type ``hint`` (none when it is not a hyperparameter)."""
    members = [m for m in _members(hint) if m is not type(None)]
    if not members:
        return []
    literals = [m for m in members if typing.get_origin(m) is typing.Literal]
    plain = [m for m in members if typing.get_origin(m) is not typing.Literal]
    if literals and not plain:
        options = {option for m in literals for option in typing.get_args(m)}
        return [bad for bad in OPTION_BAD if bad not in options]
    if any(m not in (int, float, bool, str) for m in plain) or literals:
        return []
    if plain == [bool]:
        return BOOL_BAD
    if str in plain:
        return PATTERN_BAD if name in ("include", "exclude", "pattern") else TEXT_BAD
    return INTEGER_BAD if float not in plain else NUMBER_BAD


def _hints(obj: Any) -> dict[str, Any]:
    target = obj.__init__ if inspect.isclass(obj) else obj
    module = importlib.import_module(obj.__module__)
    try:
        return typing.get_type_hints(target, vars(module))
    except Exception:  # pragma: no cover - unresolvable annotations: nothing to fuzz
        return {}


@dataclass(frozen=True)
class Case:
    public: str
    argument: str
    value: Any

    def __str__(self) -> str:
        shown = (
            "10**400" if isinstance(self.value, int) and self.value > 10**30 else repr(self.value)
        )
        return f"{self.public}({self.argument}={shown})"


def fuzz_cases() -> list[Case]:
    cases = []
    for public, obj in sorted(public_names().items()):
        if public in NOT_CALLABLE:
            continue
        hints = _hints(obj)
        target = obj.__init__ if inspect.isclass(obj) else obj
        for parameter in inspect.signature(target).parameters.values():
            if parameter.name == "self" or parameter.kind in (
                parameter.VAR_POSITIONAL,
                parameter.VAR_KEYWORD,
            ):
                continue
            for value in bad_values(parameter.name, hints.get(parameter.name)):
                cases.append(Case(public, parameter.name, value))
    return cases


def run_case(case: Case) -> str:
    """``"clear"``, ``"silent"`` or ``"unclear: <error>"`` for one bad call."""
    obj = public_names()[case.public]
    args, kwargs = VALID_CALLS[case.public]()
    target = obj.__init__ if inspect.isclass(obj) else obj
    names = [p for p in inspect.signature(target).parameters if p != "self"]
    position = names.index(case.argument)
    if position < len(args):
        args = (*args[:position], case.value, *args[position + 1 :])
    else:
        kwargs = {**kwargs, case.argument: case.value}
    try:
        result = obj(*args, **kwargs)
        if hasattr(result, "__enter__"):  # a context manager checks when entered
            with result:
                pass
    except (ValueError, TypeError) as error:
        return "clear" if case.argument in str(error) else f"unclear: {error!r}"[:300]
    except Exception as error:  # any other exception is not a clear refusal
        return f"unclear: {error!r}"[:300]
    return "silent"


CASES = fuzz_cases()


def test_every_public_name_is_fuzzed() -> None:
    names = set(public_names())
    missing = names - set(VALID_CALLS) - set(NOT_CALLABLE)
    stale = (set(VALID_CALLS) | set(NOT_CALLABLE)) - names
    assert not missing, f"public names without a valid call in VALID_CALLS: {sorted(missing)}"
    assert not stale, f"entries for names that are not public: {sorted(stale)}"


@pytest.mark.parametrize("public", sorted(VALID_CALLS))
def test_every_valid_call_succeeds(public: str) -> None:
    args, kwargs = VALID_CALLS[public]()
    public_names()[public](*args, **kwargs)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_bad_value_raises_an_error_naming_the_argument(case: Case) -> None:
    outcome = run_case(case)
    assert outcome == "clear", f"{case}: {outcome}"
