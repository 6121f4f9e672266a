"""Lightning adapter for Norm Loss: gradient injection in ``on_before_optimizer_step``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import nn

from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.functional.norm_loss import (
    REDUCTIONS,
    Reduction,
    add_norm_loss_grad_,
    apply_decoupled_norm_loss_,
    mean_abs_norm_deviation,
)
from lightning_dnn_tricks.nn.selection import WEIGHT_LAYER_TYPES, check_pattern, select_weights
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick
from lightning_dnn_tricks.validation import TrickWarning, check_bool, check_choice, check_number

NORM_LOSS_SPEC = register_trick(
    TrickSpec(
        name="norm_loss",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.norm_loss:NormLoss",
        summary="Pull every conv/linear filter towards unit L2 norm (replaces weight decay).",
        paper="Georgiou et al., Norm Loss, ICPR 2020 (arXiv 2103.06583)",
        capabilities=Capabilities(manual_optimization=True),
        docs_page="methods/norm_loss.md",
    )
)


class NormLoss(TrickCallback):
    """Norm Loss (Georgiou et al., ICPR 2020): regularise each filter's L2 norm towards 1.

    Adds ``strength * L_norm`` to the training objective, where for every selected conv/linear
    weight with rows ``w_i`` (one per output filter or neuron)
    ``L_norm = sum_layers (1/C_out) sum_i (1 - ||w_i||_2)^2``. The gradient is added to ``.grad``
    in ``on_before_optimizer_step``: after AMP unscaling, once per optimizer step under gradient
    accumulation, and after each closure evaluation for closure optimizers. It is meant to
    *replace* L2 weight decay on these tensors; a warning names the optimizer groups where both act.

    Args:
        strength: ``lambda``, the factor of the Norm Loss term (> 0).
        reduction: ``"mean"`` (the paper's per-layer ``1/C_out``) or ``"sum"`` over rows.
        layer_types: module classes to regularise (``isinstance``: timm subclasses included).
        include: regular expression on module names; only matching modules are regularised.
        exclude: regular expression on module names to leave out.
        exclude_classifier: leave the final classifier layer out.
        decoupled: scale the weights directly, by the group's lr, instead of adding the Norm
            Loss gradient: ``w_i <- w_i (1 - lr 2 c strength (1 - 1/||w_i||))`` after the
            backward pass and before the optimizer's update (the order of AdamW's decay), the
            form of the authors' code as ported in Ranger21. Under plain SGD it equals the
            gradient form; under Adam(W) they differ (Adam rescales the gradient form). The
            authors use ``reduction="sum"`` and a ``strength`` (their ``factor``) of ``1e-4``,
            alongside a small weight decay, so no weight-decay warning is given in this mode.
            Refused with optimizers that evaluate several gradients per step (SGD-G2), and
            with ``precision="16-mixed"`` (its gradient scaler may skip a step).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TrickConfigurationError: at resume, the checkpoint was written with another layer
            selection (a change of ``strength`` or ``reduction`` is accepted with a warning).

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_dnn_tricks.callbacks import NormLoss
        >>> trainer = pl.Trainer(callbacks=[NormLoss(strength=5e-3)], logger=False)

    Logs ``norm_loss/mean_abs_deviation`` (``mean_i |1 - ||w_i|| |``) at the Trainer's
    ``log_every_n_steps``.

    In company: a weight behind a parametrisation (WeightAlign) or pruned by
    ``torch.nn.utils.prune`` (Lightning's ``ModelPruning``) is regularised through its raw tensor
    (:func:`~lightning_dnn_tricks.nn.selection.raw_weight`); a tied weight once; with several
    optimizers each weight at its own optimizer's step. Two instances (two layer groups, two
    strengths) share a Trainer when their selections do not overlap.

    Note:
        Biases and normalisation parameters are never regularised (only the weights of the selected
        layers). The constants (``strength`` default, the reduction) are our choices: the paper's
        body was not available. A zero row receives zero gradient.
    """

    spec = NORM_LOSS_SPEC
    identity_arguments = ("layer_types", "include", "exclude", "exclude_classifier")
    resume_may_change = ("strength", "reduction")

    def __init__(
        self,
        strength: float = 5e-3,
        reduction: Reduction = "mean",
        layer_types: Sequence[type[nn.Module]] = WEIGHT_LAYER_TYPES,
        include: str | None = None,
        exclude: str | None = None,
        exclude_classifier: bool = False,
        decoupled: bool = False,
    ) -> None:
        check_number("strength", strength, low=0.0, low_inclusive=False)
        check_bool("decoupled", decoupled)
        check_bool("exclude_classifier", exclude_classifier)
        check_choice("reduction", reduction, REDUCTIONS)
        check_pattern("include", include)
        check_pattern("exclude", exclude)
        if not layer_types or not all(
            isinstance(t, type) and issubclass(t, nn.Module) for t in layer_types
        ):
            raise ValueError(
                "`layer_types` must be a non-empty sequence of nn.Module classes, "
                f"got {layer_types!r}."
            )
        self.strength = float(strength)
        self.reduction: Reduction = reduction
        self.layer_types = tuple(layer_types)
        self.include = include
        self.exclude = exclude
        self.exclude_classifier = exclude_classifier
        self.decoupled = decoupled
        self._weights: list[nn.Parameter] = []

    def select_weights(self, model: nn.Module) -> list[nn.Parameter]:
        """The weights this callback regularises in ``model`` (dim >= 2, raw tensors)."""
        selected = select_weights(
            model, self.layer_types, self.include, self.exclude, self.exclude_classifier
        )
        return [weight.tensor for weight in selected]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._weights = self.select_weights(pl_module)
        if not self._weights:
            warnings.warn(
                "NormLoss matched no layer: nothing will be regularised. Check `layer_types`, "
                "`include` and `exclude`.",
                TrickWarning,
                stacklevel=2,
            )
        self._refuse_overlap(trainer)
        if self.decoupled:
            self.check_decoupled(trainer)
        else:
            self._warn_on_weight_decay(trainer)  # the decoupled form runs alongside weight decay

    def check_decoupled(self, trainer: pl.Trainer) -> None:
        """Refuse what ``decoupled=True`` cannot follow: a gradient scaler that may skip the
        update (``16-mixed``) and optimizers that evaluate several gradients per step."""
        if str(trainer.precision) == "16-mixed":
            self._refuse(
                "decoupled=True scales the weights before the update, but with precision="
                "'16-mixed' the gradient scaler skips the update of a step whose gradients "
                "overflowed, and the weights would have been scaled anyway.",
                "Use precision='bf16-mixed' or '32-true', or the gradient form (decoupled=False).",
            )
        closure = [o for o in trainer.optimizers if getattr(o, "spec", None) is not None]
        closure = [o for o in closure if o.spec.capabilities.needs_closure]  # type: ignore[attr-defined]
        if closure:
            self._refuse(
                "decoupled=True scales the weights before the update, but "
                f"{type(closure[0]).__name__} evaluates the gradient at several points per step.",
                "Use the gradient form (decoupled=False) with it.",
            )

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, norms: torch.Tensor) -> None:
        if self.logging_now(trainer):
            deviation = mean_abs_norm_deviation(norms)
            self.log_metrics(trainer, pl_module, {"norm_loss/mean_abs_deviation": deviation})

    def _refuse_overlap(self, trainer: pl.Trainer) -> None:
        mine = {id(w) for w in self._weights}
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is self or not isinstance(other, NormLoss) or not other._weights:
                continue
            shared = sum(id(w) in mine for w in other._weights)
            if shared:
                self._refuse(
                    f"{shared} weights are also regularised by {other.state_key}, so their Norm "
                    "Loss gradient would be added twice.",
                    "Give the instances disjoint selections (`include`/`exclude`/`layer_types`).",
                )

    def _warn_on_weight_decay(self, trainer: pl.Trainer) -> None:
        regularised = {id(w) for w in self._weights}
        for opt_index, optimizer in enumerate(trainer.optimizers):
            for group_index, group in enumerate(optimizer.param_groups):
                decay = group.get("weight_decay", 0.0)
                overlap = sum(id(p) in regularised for p in group["params"])
                if decay and overlap:
                    warnings.warn(
                        f"NormLoss: weight_decay={decay} of optimizer {opt_index}, param group "
                        f"{group_index} also acts on {overlap} of the {len(regularised)} tensors "
                        "Norm Loss regularises. Norm Loss is meant to replace weight decay there: "
                        "put those weights in a param group with weight_decay=0.",
                        TrickWarning,
                        stacklevel=2,
                    )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        weights = self.stepping_tensors(optimizer, self._weights)
        if not weights:
            return
        if not self.decoupled:
            norms = add_norm_loss_grad_(weights, self.strength, self.reduction)
        else:  # after the backward, before the update: the order of AdamW's decay and Ranger21
            lrs = self.stepping_lrs(optimizer, self._weights)
            norms = apply_decoupled_norm_loss_(weights, lrs, self.strength, self.reduction)
        self._log(trainer, pl_module, norms)
