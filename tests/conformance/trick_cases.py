"""Test settings for every registered trick: the conformance suites are driven by this table.

A trick registered in ``lightning_dnn_tricks`` without an entry here fails
``test_every_registered_trick_has_test_settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_dnn_tricks.callbacks import (
    BNSR,
    AcceleratedIMP,
    AdaptiveImportanceSampling,
    IterativeMagnitudePruning,
    NormGroup,
    NormLoss,
    OptimizerSupport,
    WeightAlign,
    WeightNormSupervision,
)
from lightning_dnn_tricks.optim import SGDG2, FrankWolfe


@dataclass(frozen=True)
class TrickCase:
    """How the conformance suites build and exercise one trick.

    Attributes:
        callbacks: builds the trick's callbacks for a run (fresh instances each call).
        bad_arguments: constructor keyword arguments that must raise ``ValueError``, each with the
            argument name the message must contain.
        cli_init_args: ``init_args`` for a LightningCLI YAML round-trip, and the attribute values
            expected on the instantiated callback.
        build_with: builds the trick from keyword arguments (for the bad-argument table).
        active_metric: a metric the trick logs during training: proof that it ran.
        backbones: the names in ``backbones.BACKBONES`` the trick applies to (``None``: all); on
            the others the backbone suite expects the trick's "matched no layer" warning.
        optimizer: for optimizer tricks, builds the optimizer from the parameters; the suites
            give it to the model in place of the model's own (``None``: keep the model's).
        backbone_callbacks: builds the callbacks for one backbone of the backbone suite, where
            a backbone needs other settings (``None``: ``callbacks`` everywhere).
    """

    callbacks: Callable[[], list[pl.Callback]]
    build_with: Callable[..., Any]
    active_metric: str
    bad_arguments: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    cli_init_args: dict[str, Any] = field(default_factory=dict)
    backbones: frozenset[str] | None = None
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None
    backbone_callbacks: Callable[[str], list[pl.Callback]] | None = None

    def callbacks_for(self, backbone: str) -> list[pl.Callback]:
        """The callbacks of a run on ``backbone``."""
        if self.backbone_callbacks is None:
            return self.callbacks()
        return self.backbone_callbacks(backbone)


TRICK_CASES: dict[str, TrickCase] = {
    # Pruning: rounds of one epoch, so the DDP run (2 batches per rank per epoch, 3 steps) prunes
    # at the start of epoch 1; the resume run (14 steps inside epoch 0) carries the rewind snapshot
    # of step 1 through the checkpoint.
    "iterative_pruning": TrickCase(
        callbacks=lambda: [
            IterativeMagnitudePruning(
                amount=0.5, rounds=2, epochs_per_round=1, rewind="weights", rewind_step=1
            )
        ],
        build_with=IterativeMagnitudePruning,
        active_metric="pruning/sparsity",
        bad_arguments=[
            ({"amount": 0.0}, "amount"),
            ({"amount": 1.0}, "amount"),
            ({"amount": "big"}, "amount"),
            ({"rounds": 0}, "rounds"),
            ({"rounds": 1.5}, "rounds"),
            ({"epochs_per_round": 0}, "epochs_per_round"),
            ({"scope": "row"}, "scope"),
            ({"rewind": "restart"}, "rewind"),
            ({"rewind": "weights"}, "rewind_epoch"),
            ({"rewind": "lr", "rewind_step": 3}, "rewind_step"),
            ({"rewind": "weights", "rewind_epoch": -1}, "rewind_epoch"),
            ({"rewind": "weights", "rewind_epoch": 10, "epochs_per_round": 10}, "rewind_epoch"),
            ({"include": "("}, "include"),
            ({"exclude": "[a-"}, "exclude"),
            ({"layer_types": []}, "layer_types"),
        ],
        cli_init_args={"amount": 0.3, "rounds": 3, "scope": "layerwise", "rewind": "init"},
    ),
    "accelerated_pruning": TrickCase(
        callbacks=lambda: [
            AcceleratedIMP(
                amount=0.5,
                rounds=2,
                epochs_per_round=2,
                accelerated_epochs=1,
                stability_threshold=0.9,
            )
        ],
        build_with=AcceleratedIMP,
        active_metric="pruning/sparsity",
        bad_arguments=[
            ({"accelerated_epochs": 0}, "accelerated_epochs"),
            ({"accelerated_epochs": 1.5}, "accelerated_epochs"),
            ({"accelerated_epochs": 0.0}, "accelerated_epochs"),
            ({"stability_threshold": 0.0}, "stability_threshold"),
            ({"stability_threshold": 1.1}, "stability_threshold"),
            ({"amount": -0.2}, "amount"),
            ({"rounds": 0}, "rounds"),
        ],
        cli_init_args={"accelerated_epochs": 2, "stability_threshold": 0.99, "rounds": 4},
    ),
    "norm_loss": TrickCase(
        callbacks=lambda: [NormLoss(strength=1e-2)],
        build_with=NormLoss,
        active_metric="norm_loss/mean_abs_deviation",
        bad_arguments=[
            ({"strength": 0.0}, "strength"),
            ({"strength": -1.0}, "strength"),
            ({"strength": float("nan")}, "strength"),
            ({"strength": "big"}, "strength"),
            ({"reduction": "max"}, "reduction"),
            ({"include": "("}, "include"),
            ({"exclude": "[a-"}, "exclude"),
            ({"layer_types": []}, "layer_types"),
            ({"layer_types": [int]}, "layer_types"),
        ],
        cli_init_args={"strength": 0.02, "reduction": "sum", "exclude_classifier": True},
    ),
    "weight_align": TrickCase(
        # Linear layers and the classifier included, so every backbone has a layer to align (the
        # StdConv2d backbone's only other conv is its 1x1-conv classifier; the RNN has no conv).
        callbacks=lambda: [WeightAlign(include_linear=True, exclude_classifier=False)],
        build_with=WeightAlign,
        active_metric="weight_align/mean_gain",
        bad_arguments=[
            ({"gain": 0.0}, "gain"),
            ({"gain": float("inf")}, "gain"),
            ({"gain": "big"}, "gain"),
            ({"eps": -1e-5}, "eps"),
            ({"include": "("}, "include"),
            ({"exclude": "[a-"}, "exclude"),
            ({"layer_types": []}, "layer_types"),
            ({"layer_types": [int]}, "layer_types"),
        ],
        cli_init_args={"gain": 1.0, "eps": 1e-4, "include_linear": True, "exclude": "^head"},
    ),
    "bnsr": TrickCase(
        callbacks=lambda: [BNSR()],
        build_with=BNSR,
        active_metric="bnsr/mean_exponent",
        bad_arguments=[
            ({"alpha": -0.1}, "alpha"),
            ({"alpha": 2.5}, "alpha"),
            ({"alpha": float("nan")}, "alpha"),
            ({"alpha": "big"}, "alpha"),
            ({"warp": "box_cox"}, "warp"),
            ({"warp": "identity", "newton_steps": 2}, "newton_steps"),
            ({"newton_steps": -1}, "newton_steps"),
            ({"newton_steps": 1.5}, "newton_steps"),
            ({"newton_steps": 11}, "newton_steps"),
            ({"include": "("}, "include"),
            ({"exclude": "[a-"}, "exclude"),
        ],
        cli_init_args={"alpha": 0.5, "newton_steps": 1, "exclude": "^model\\.conv1$"},
        backbones=frozenset({"resnet18", "mobilenetv3_small_050"}),  # the BatchNorm ones
    ),
    "weight_norm_supervision": TrickCase(
        # Both modes, every estimator: recurrent matrices and convs projected (convs through their
        # conv/transposed-conv operator), every other weight penalised with the reshape bound.
        callbacks=lambda: [
            WeightNormSupervision(
                groups=[
                    NormGroup("recurrent", bound=0.9, mode="project", include="weight_hh"),
                    NormGroup("conv", bound=2.0, layer_types=(torch.nn.Conv2d,), exclude="head"),
                    NormGroup("feedforward", bound=0.5, mode="penalty", estimate="reshape"),
                ],
            )
        ],
        build_with=WeightNormSupervision,
        active_metric="wns/feedforward/max_norm",
        bad_arguments=[
            ({"groups": []}, "groups"),
            ({"groups": [{"bound": 1.0}]}, "groups"),
            ({"groups": [{"name": "a", "bound": 0.0}]}, "bound"),
            ({"groups": [{"name": "a", "bound": float("nan")}]}, "bound"),
            ({"groups": [{"name": "a", "mode": "clip"}]}, "mode"),
            ({"groups": [{"name": "a", "strength": -1.0}]}, "strength"),
            ({"groups": [{"name": "a", "estimate": "exact"}]}, "estimate"),
            ({"groups": [{"name": "a", "include": "("}]}, "include"),
            ({"groups": [{"name": "a", "layer_types": [int]}]}, "layer_types"),
            ({"iterations": 0}, "iterations"),
            ({"iterations": 1.5}, "iterations"),
            ({"tolerance": 0.0}, "tolerance"),
            ({"margin": 1.5}, "margin"),
            ({"max_iterations": 1}, "max_iterations"),
        ],
        cli_init_args={"iterations": 2},
    ),
    # Importance sampling (issue 7): refreshed every 2 batches, so that the resume run (crash at
    # step 9) restores a mid-epoch distribution and the DDP run (2 batches per rank per epoch)
    # refreshes from all-gathered scores. The regression RNN has no logits: score "loss".
    "importance_sampling": TrickCase(
        callbacks=lambda: [AdaptiveImportanceSampling(refresh_every=2)],
        backbone_callbacks=lambda backbone: [
            AdaptiveImportanceSampling(
                refresh_every=2,
                score="loss" if backbone.startswith("sequence") else "logit_grad",
            )
        ],
        build_with=AdaptiveImportanceSampling,
        active_metric="importance/ess",
        bad_arguments=[
            ({"theta": 0.0}, "theta"),
            ({"theta": 1.5}, "theta"),
            ({"theta": float("nan")}, "theta"),
            ({"theta": "big"}, "theta"),
            ({"refresh_every": 0}, "refresh_every"),
            ({"refresh_every": 2.5}, "refresh_every"),
            ({"score": "gradient"}, "score"),
            ({"initial_score": 0.0}, "initial_score"),
            ({"seed": -1}, "seed"),
            ({"grad_norm_chunk_size": 0}, "grad_norm_chunk_size"),
        ],
        cli_init_args={"theta": 0.5, "refresh_every": 10, "score": "loss", "seed": 3},
    ),
}


# Optimizer tricks (issue 5): the model trains with the trick's optimizer, and the Trainer lists
# OptimizerSupport, as a user's does (without it the first step raises, naming the fix).
def _params() -> list[torch.nn.Parameter]:
    return list(torch.nn.Linear(3, 2).parameters())


TRICK_CASES.update(
    {
        "sgdg2": TrickCase(
            callbacks=lambda: [OptimizerSupport()],
            optimizer=lambda params: SGDG2(params, lr=0.02),
            build_with=lambda **kwargs: SGDG2(_params(), **kwargs),
            active_metric="sgdg2/lr",
            bad_arguments=[
                ({"lr": 0.0}, "lr"),
                ({"lr": float("nan")}, "lr"),
                ({"lr": "big"}, "lr"),
                ({"beta": 1.0}, "beta"),
                ({"beta": -0.1}, "beta"),
                ({"h_min": 0.0}, "h_min"),
                ({"h_max": -1.0}, "h_max"),
                ({"lr": 1.0, "h_max": 0.5}, "lr"),
                ({"weight_decay": -1e-4}, "weight_decay"),
                ({"mode": "rk4"}, "mode"),
                ({"tiny": 0.0}, "tiny"),
            ],
            cli_init_args={"lr": 0.05, "beta": 0.8, "h_max": 1.0, "weight_decay": 1e-4},
        ),
        # K=2 so that the 2-step backbone runs restart once (the weights then hold a new anchor)
        # and the resume run (crash at step 9) is saved mid-trajectory.
        "frank_wolfe": TrickCase(
            callbacks=lambda: [OptimizerSupport()],
            optimizer=lambda params: FrankWolfe(params, lr=1e-3, inner_steps=2),
            build_with=lambda **kwargs: FrankWolfe(_params(), **kwargs),
            active_metric="frank_wolfe/restarts",
            bad_arguments=[
                ({"lr": 0.0}, "lr"),
                ({"inner_steps": 0}, "inner_steps"),
                ({"inner_steps": 2.5}, "inner_steps"),
                ({"radius": -1e-3}, "radius"),
                ({"trajectory": "curved"}, "trajectory"),
                ({"tiny": -1.0}, "tiny"),
                ({"base_optimizer": "torch.optim.Nope"}, "base_optimizer"),
                ({"base_optimizer": int}, "base_optimizer"),
                ({"base_kwargs": {"lr": 0.1}}, "base_kwargs"),
                ({"base_kwargs": {"momentum_typo": 0.9}}, "base_kwargs"),
                ({"base_kwargs": [1]}, "base_kwargs"),
            ],
            cli_init_args={
                "lr": 2e-3,
                "inner_steps": 3,
                "trajectory": "textbook",
                "base_optimizer": "torch.optim.AdamW",
                "base_kwargs": {"weight_decay": 0.0},
            },
        ),
    }
)
