"""The registry of tricks and the capabilities each one declares.

Every trick (callback, optimizer or data component) registers a :class:`TrickSpec`. The ``ldt list``
command, the docs' compatibility matrix and the conformance test suites are all generated from it.
Pure Python: importing this module does not import Lightning.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal, get_args

from lightning_dnn_tricks.validation import check_bool, check_choice, check_number, check_text

Precision = Literal["32-true", "bf16-mixed", "16-mixed"]
Strategy = Literal["single_device", "ddp"]
TrickKind = Literal["callback", "optimizer", "data"]

Effect = Literal[
    "optimizer",
    "adapts_learning_rate",
    "sets_learning_rate",
    "writes_weights_at_train_end",
    "averages_weights",
    "masks_weights",
    "edits_gradients_dense",
    "bounds_spectral_norm",
    "reparametrizes_weights",
    "replaces_norm_layers",
    "changes_data",
    "changes_loss",
    "rewinds_schedule",
    "needs_every_epoch",
    "stops_early",
    "changes_accumulation",
    "unfreezes_parameters",
    "saves_checkpoints",
]
#: What each declared effect means (the docs' composition page lists this table).
EFFECTS: dict[Effect, str] = {
    "optimizer": "is the optimizer of the weights it trains",
    "adapts_learning_rate": "sets the lr itself at every step (an adapted step size)",
    "sets_learning_rate": "writes the optimizer's lr during training (a schedule of its own)",
    "writes_weights_at_train_end": "writes other values into the weights when training ends",
    "averages_weights": "keeps an average of the weights and swaps it in (validation, train end)",
    "masks_weights": "holds pruned weights (and their optimizer state) at zero",
    "edits_gradients_dense": "adds gradients that are dense (non-zero where a weight is zero)",
    "bounds_spectral_norm": "bounds the spectral norm of the weights it supervises",
    "reparametrizes_weights": "computes a layer's weight from a raw tensor in every forward pass",
    "replaces_norm_layers": "replaces normalisation layers with its own modules",
    "changes_data": "replaces the training sampler or the batches",
    "changes_loss": "needs the module's loss in a form of its own (weighted per example)",
    "rewinds_schedule": "restores the optimizer's hyperparameters and scheduler state",
    "needs_every_epoch": "has a schedule that needs every epoch up to max_epochs",
    "stops_early": "may end training before max_epochs",
    "changes_accumulation": "changes accumulate_grad_batches during training",
    "unfreezes_parameters": "unfreezes parameters and adds param groups during training",
    "saves_checkpoints": "writes checkpoints",
}

ALL_PRECISIONS: tuple[Precision, ...] = ("32-true", "bf16-mixed", "16-mixed")
ALL_STRATEGIES: tuple[Strategy, ...] = ("single_device", "ddp")

# Modules whose import registers the shipped tricks.
_TRICK_MODULES = ("lightning_dnn_tricks.callbacks", "lightning_dnn_tricks.optim")


@dataclass(frozen=True)
class Capabilities:
    """What a trick needs from a training run and what it supports.

    Attributes:
        needs_closure: the optimizer step must receive a closure (several gradient evaluations).
        gradient_evaluations_per_step: forward/backward passes per optimizer step.
        changes_structure: the trick modifies the model (surgery or parametrisation) at ``setup``.
        precisions: Trainer ``precision`` values the trick supports.
        strategies: strategies the trick supports (``single_device``, ``ddp``).
        gradient_accumulation: supports ``accumulate_grad_batches > 1``.
        torch_compile: works on a ``torch.compile``-d module.
        manual_optimization: works when ``automatic_optimization`` is ``False``.
        max_optimizers: the largest number of optimizers supported (``None``: any).
        effects: what the trick does to state it shares with other callbacks (see
            :data:`EFFECTS`); the composition rules of
            :mod:`lightning_dnn_tricks.composition` are decided from these declarations.
    """

    needs_closure: bool = False
    gradient_evaluations_per_step: int = 1
    changes_structure: bool = False
    precisions: tuple[Precision, ...] = ALL_PRECISIONS
    strategies: tuple[Strategy, ...] = ALL_STRATEGIES
    gradient_accumulation: bool = True
    torch_compile: bool = False
    manual_optimization: bool = False
    max_optimizers: int | None = None
    effects: frozenset[Effect] = frozenset()

    def __post_init__(self) -> None:
        for flag in (
            "needs_closure",
            "changes_structure",
            "gradient_accumulation",
            "torch_compile",
            "manual_optimization",
        ):
            check_bool(flag, getattr(self, flag))
        check_number(
            "gradient_evaluations_per_step", self.gradient_evaluations_per_step, low=1, integer=True
        )
        if self.max_optimizers is not None:
            check_number("max_optimizers", self.max_optimizers, low=1, integer=True)
        for precision in self.precisions:
            check_choice("precisions", precision, get_args(Precision))
        for strategy in self.strategies:
            check_choice("strategies", strategy, get_args(Strategy))
        unknown = set(self.effects) - set(EFFECTS)
        if unknown:
            raise ValueError(f"`effects` must be among {sorted(EFFECTS)}, got {sorted(unknown)}.")
        object.__setattr__(self, "effects", frozenset(self.effects))

    def as_row(self) -> dict[str, str]:
        """The capabilities as short strings, one per column of the compatibility matrix."""

        def yes_no(flag: bool) -> str:
            return "yes" if flag else "no"

        return {
            "closure": "required" if self.needs_closure else "not needed",
            "grad evals/step": str(self.gradient_evaluations_per_step),
            "changes model": yes_no(self.changes_structure),
            "precision": ", ".join(self.precisions),
            "strategy": ", ".join(self.strategies),
            "grad accumulation": yes_no(self.gradient_accumulation),
            "torch.compile": yes_no(self.torch_compile),
            "manual optimization": yes_no(self.manual_optimization),
            "optimizers": "any" if self.max_optimizers is None else f"<= {self.max_optimizers}",
        }


@dataclass(frozen=True)
class TrickSpec:
    """A registered trick: its name, where it lives and what it supports."""

    name: str
    kind: TrickKind
    import_path: str
    summary: str
    paper: str
    capabilities: Capabilities = field(default_factory=Capabilities)
    reconstruction: bool = False
    docs_page: str = ""

    def __post_init__(self) -> None:
        for name in ("name", "import_path", "summary", "paper", "docs_page"):
            check_text(name, getattr(self, name), optional=False)
        check_choice("kind", self.kind, get_args(TrickKind))
        check_bool("reconstruction", self.reconstruction)
        if ":" not in self.import_path:
            raise ValueError(f"`import_path` must be 'module:attribute', got {self.import_path!r}.")

    def load(self) -> type:
        """Import and return the trick's class."""
        module_name, _, attribute = self.import_path.partition(":")
        loaded: type = getattr(importlib.import_module(module_name), attribute)
        return loaded


_REGISTRY: dict[str, TrickSpec] = {}


def register_trick(spec: TrickSpec) -> TrickSpec:
    """Add ``spec`` to the registry (idempotent for an identical spec)."""
    existing = _REGISTRY.get(spec.name)
    if existing is not None and existing != spec:
        raise ValueError(f"A different trick is already registered as {spec.name!r}.")
    _REGISTRY[spec.name] = spec
    return spec


def _load_shipped_tricks() -> None:
    for module in _TRICK_MODULES:
        importlib.import_module(module)


def list_tricks(kind: TrickKind | None = None) -> list[TrickSpec]:
    """All registered tricks (optionally of one ``kind``), sorted by name."""
    if kind is not None:
        check_choice("kind", kind, get_args(TrickKind))
    _load_shipped_tricks()
    specs = sorted(_REGISTRY.values(), key=lambda spec: spec.name)
    return [spec for spec in specs if kind is None or spec.kind == kind]


def get_trick(name: str) -> TrickSpec:
    """The registered trick called ``name``; ``KeyError`` lists the known names."""
    check_text("name", name, optional=False)
    _load_shipped_tricks()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise KeyError(f"No trick named {name!r}. Registered tricks: {known}.") from None
