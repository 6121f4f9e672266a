"""Which tricks and Lightning callbacks run together: rules decided from declared effects.

Every trick declares in its :class:`~lightning_dnn_tricks.registry.Capabilities` what it does to
state it shares with other callbacks (``effects``); Lightning's own callbacks that touch weights,
loss or loop get their declarations here. A pair is refused when a rule below matches its
effects, with a message that names both and the fix; every other pair is supported, and the
composition suite (``tests/conformance/test_composition.py``) checks both effects of each. The
docs' composition matrix is generated from :func:`composition_matrix`.

Pure Python: importing this module does not import Lightning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lightning_dnn_tricks.registry import Capabilities, Effect, TrickSpec, list_tricks


@dataclass(frozen=True)
class BuiltinCallback:
    """A Lightning callback and the effects it declares here."""

    name: str
    import_path: str
    effects: frozenset[Effect]


#: Lightning's callbacks that touch weights, loss or loop, by class name.
BUILTIN_CALLBACKS: dict[str, BuiltinCallback] = {
    cb.name: cb
    for cb in (
        BuiltinCallback(
            "EMAWeightAveraging",
            "lightning.pytorch.callbacks.EMAWeightAveraging",
            frozenset({"averages_weights", "writes_weights_at_train_end"}),
        ),
        BuiltinCallback(
            "StochasticWeightAveraging",
            "lightning.pytorch.callbacks.StochasticWeightAveraging",
            frozenset(
                {
                    "averages_weights",
                    "writes_weights_at_train_end",
                    "rewinds_schedule",
                    "sets_learning_rate",
                }
            ),
        ),
        BuiltinCallback(
            "ModelPruning",
            "lightning.pytorch.callbacks.ModelPruning",
            frozenset({"masks_weights", "reparametrizes_weights"}),
        ),
        BuiltinCallback(
            "BackboneFinetuning",
            "lightning.pytorch.callbacks.BackboneFinetuning",
            frozenset({"unfreezes_parameters", "sets_learning_rate"}),
        ),
        BuiltinCallback(
            "GradientAccumulationScheduler",
            "lightning.pytorch.callbacks.GradientAccumulationScheduler",
            frozenset({"changes_accumulation"}),
        ),
        BuiltinCallback(
            "EarlyStopping",
            "lightning.pytorch.callbacks.EarlyStopping",
            frozenset({"stops_early"}),
        ),
        BuiltinCallback(
            "ModelCheckpoint",
            "lightning.pytorch.callbacks.ModelCheckpoint",
            frozenset({"saves_checkpoints"}),
        ),
    )
}


@dataclass(frozen=True)
class Party:
    """One member of a pair: its name, declared effects and capabilities (tricks only)."""

    name: str
    effects: frozenset[Effect]
    capabilities: Capabilities | None = None


@dataclass(frozen=True)
class Rule:
    """A refusal: it matches when one party has ``first`` and the other ``second`` effects."""

    first: Effect
    second: Effect
    reason: str
    fix: str


#: The refusals. A pair matching none of them is supported.
RULES: tuple[Rule, ...] = (
    Rule(
        "optimizer",
        "optimizer",
        "both are the optimizer of the model's weights",
        "Use one of them (configure_optimizers returns one optimizer).",
    ),
    Rule(
        "masks_weights",
        "masks_weights",
        "both prune the weights, and each would keep its own masks and undo the other's",
        "Use one pruning method.",
    ),
    Rule(
        "masks_weights",
        "reparametrizes_weights",
        "the layer's weight is recomputed from a raw tensor in every forward pass, so zeroing "
        "entries of either tensor does not leave zeros in the weight the layer uses",
        "Leave the reparametrised layers out of pruning (exclude=...) or out of the "
        "reparametrisation, or fold it first (e.g. fold_weight_align) and prune the plain model.",
    ),
    Rule(
        "bounds_spectral_norm",
        "reparametrizes_weights",
        "a spectral bound on the raw tensor says nothing of the weight the layer uses",
        "Leave the reparametrised layers out of the Weight Norm Supervision groups.",
    ),
    Rule(
        "needs_every_epoch",
        "stops_early",
        "early stopping would end the schedule before its last round, with no error",
        "Remove EarlyStopping; keep the best round with ModelCheckpoint(monitor=...).",
    ),
    Rule(
        "rewinds_schedule",
        "rewinds_schedule",
        "both set the learning-rate schedule (a rewind would restore a scheduler state "
        "into SWA's SWALR, or the reverse)",
        "Use one of them; to average the last round, use EMAWeightAveraging.",
    ),
    Rule(
        "rewinds_schedule",
        "unfreezes_parameters",
        "a rewind restores the optimizer's param groups as they were before parameters were "
        "unfrozen and added",
        "Unfreeze before the first rewind point, or train without BackboneFinetuning.",
    ),
    Rule(
        "adapts_learning_rate",
        "sets_learning_rate",
        "SGD-G2 sets the lr to its adapted step size at every step, and the other writes the lr "
        "on its own schedule, so each overwrites the other",
        "Train that run with SRK2 or SGD (a scheduled lr), or drop the lr-writing callback.",
    ),
    Rule(
        "changes_data",
        "changes_data",
        "both replace the training sampler",
        "Use one.",
    ),
)


def conflict(first: Party, second: Party) -> str | None:
    """The refusal message for this pair, or ``None`` when it is supported."""
    for a, b in ((first, second), (second, first)):
        for rule in RULES:
            if rule.first in a.effects and rule.second in b.effects:
                return f"{a.name} and {b.name} do not compose: {rule.reason}. {rule.fix}"
        caps = a.capabilities
        if (
            caps is not None
            and not caps.gradient_accumulation
            and ("changes_accumulation" in b.effects)
        ):
            return (
                f"{a.name} and {b.name} do not compose: {b.name} raises accumulate_grad_batches "
                f"during training and {a.name} does not support gradient accumulation. Remove "
                f"{b.name} and raise the batch size instead."
            )
    return None


def trick_party(spec: TrickSpec) -> Party:
    """The party of a registered trick."""
    effects = set(spec.capabilities.effects)
    if spec.kind == "optimizer":
        effects.add("optimizer")
    return Party(spec.name, frozenset(effects), spec.capabilities)


def builtin_party(name: str) -> Party:
    """The party of one of Lightning's callbacks in :data:`BUILTIN_CALLBACKS`."""
    return Party(name, BUILTIN_CALLBACKS[name].effects)


def composition_pairs() -> list[tuple[Party, Party]]:
    """Every pair the composition suite covers: each pair of registered tricks (a trick with a
    second instance of itself included) and each trick with each of Lightning's callbacks."""
    tricks = [trick_party(spec) for spec in list_tricks()]
    pairs = [(a, b) for i, a in enumerate(tricks) for b in tricks[i:]]
    pairs += [(a, builtin_party(name)) for a in tricks for name in BUILTIN_CALLBACKS]
    return pairs


def composition_matrix(
    describe: Callable[[str | None], str] = lambda message: "refused" if message else "supported",
) -> dict[str, dict[str, str]]:
    """``{trick: {other: status}}`` for every pair of :func:`composition_pairs`."""
    matrix: dict[str, dict[str, str]] = {}
    for a, b in composition_pairs():
        status = describe(conflict(a, b))
        matrix.setdefault(a.name, {})[b.name] = status
        if b.name not in BUILTIN_CALLBACKS:
            matrix.setdefault(b.name, {})[a.name] = status
    return matrix
