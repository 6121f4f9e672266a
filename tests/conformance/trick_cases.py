"""Test settings for every registered trick: the conformance suites are driven by this table.

A trick registered in ``lightning_dnn_tricks`` without an entry here fails
``test_every_registered_trick_has_test_settings``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl

from lightning_dnn_tricks.callbacks import BNSR, NormLoss, WeightAlign


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
    """

    callbacks: Callable[[], list[pl.Callback]]
    build_with: Callable[..., Any]
    active_metric: str
    bad_arguments: list[tuple[dict[str, Any], str]] = field(default_factory=list)
    cli_init_args: dict[str, Any] = field(default_factory=dict)
    backbones: frozenset[str] | None = None


TRICK_CASES: dict[str, TrickCase] = {
    "norm_loss": TrickCase(
        callbacks=lambda: [NormLoss(strength=1e-2, log_every_n_steps=1)],
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
            ({"log_every_n_steps": -1}, "log_every_n_steps"),
            ({"log_every_n_steps": 1.5}, "log_every_n_steps"),
            ({"layer_types": []}, "layer_types"),
            ({"layer_types": [int]}, "layer_types"),
        ],
        cli_init_args={"strength": 0.02, "reduction": "sum", "exclude_classifier": True},
    ),
    "weight_align": TrickCase(
        # Linear layers and the classifier included, so every backbone has a layer to align (the
        # StdConv2d backbone's only other conv is its 1x1-conv classifier; the RNN has no conv).
        callbacks=lambda: [
            WeightAlign(include_linear=True, exclude_classifier=False, log_every_n_steps=1)
        ],
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
            ({"log_every_n_steps": -1}, "log_every_n_steps"),
        ],
        cli_init_args={"gain": 1.0, "eps": 1e-4, "include_linear": True, "exclude": "^head"},
    ),
    "bnsr": TrickCase(
        callbacks=lambda: [BNSR(log_every_n_steps=1)],
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
            ({"log_every_n_steps": -1}, "log_every_n_steps"),
        ],
        cli_init_args={"alpha": 0.5, "newton_steps": 1, "exclude": "^model\\.conv1$"},
        backbones=frozenset({"resnet18", "mobilenetv3_small_050"}),  # the BatchNorm ones
    ),
}
