"""Lightning adapter for WeightAlign: the parametrisation is registered in ``setup``."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
from torch import Tensor, nn

from lightning_dnn_tricks.callbacks.surgery import SurgeryCallback
from lightning_dnn_tricks.functional.weight_align import (
    DEFAULT_LAYER_TYPES,
    apply_weight_align,
    check_weight_align_arguments,
)
from lightning_dnn_tricks.nn.surgery import SurgerySummary
from lightning_dnn_tricks.nn.weight_align import (
    DEFAULT_EPS,
    DEFAULT_GAIN,
    WeightAlignParametrization,
)
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick

WEIGHT_ALIGN_SPEC = register_trick(
    TrickSpec(
        name="weight_align",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.weight_align:WeightAlign",
        summary="Standardise every conv filter in the forward pass, with a learnable gain "
        "(batch-size independent normalisation).",
        paper="Shi et al., WeightAlign, ICPR 2020 (arXiv 2010.07160)",
        capabilities=Capabilities(
            changes_structure=True,
            precisions=("32-true", "bf16-mixed"),
            manual_optimization=True,
            effects=frozenset({"reparametrizes_weights"}),
        ),
        docs_page="methods/weight_align.md",
    )
)


class WeightAlign(SurgeryCallback):
    """WeightAlign (Shi et al., ICPR 2020): normalise activations by aligning the weights.

    In ``setup`` (before the optimizers are built and before a checkpoint is restored, so
    checkpoints restore into the aligned model) every selected conv weight ``W`` of shape
    ``(C_out, ...)`` with fan-in ``N`` gets a parametrisation that, in every forward pass, uses::

        W_hat_i = gamma_i * (W_i - mu_i) / (sqrt(N) * sigma_i + eps)

    per filter ``i`` (mean ``mu_i``, population standard deviation ``sigma_i``, learnable gain
    ``gamma_i`` initialised to ``gain``). No sample statistics: the layer behaves the same at any
    batch size, alone or with BatchNorm/GroupNorm. Layers that already standardise their weights
    (timm ``StdConv2d``, ``ScaledStdConv2d``) and layers whose filters have a fan-in below 2
    (``Linear(1, n)``, a depthwise 1x1 conv: they would be dead) are skipped with a notice; the
    summary of changed and skipped layers (with each reason) is printed once (rank zero), and a
    warning is raised when no layer matched.
    Applying twice (a second ``fit``, ``test`` after ``fit``) changes nothing more. The mean gain
    is logged as ``weight_align/mean_gain``.

    Args:
        gain: initial per-filter gain ``gamma`` (``> 0``; default ``sqrt(2)``, the He gain).
        eps: added to ``sqrt(N) * sigma`` (``>= 0``).
        layer_types: module classes to align (``isinstance``; default ``Conv1d``, ``Conv2d``,
            grouped and depthwise convs included).
        include_linear: also align linear layers.
        exclude_classifier: leave the model's final classifier alone.
        include: regular expression on module names; only matching modules are aligned.
        exclude: regular expression on module names to leave out.

    Raises:
        ValueError: an argument is out of range or of the wrong type (the message names it).
        TrickConfigurationError: at ``setup``, the Trainer uses an unsupported precision
            (``16-mixed`` is untested) or strategy.

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_dnn_tricks.callbacks import WeightAlign
        >>> trainer = pl.Trainer(callbacks=[WeightAlign()], logger=False)

    Note:
        The default gain ``sqrt(2)`` and ``eps = 1e-5`` (added to ``sqrt(N) sigma``) are our
        reconstruction of the paper's constants (see its method card). Export a trained model with
        :func:`~lightning_dnn_tricks.functional.fold_weight_align` (plain convs, same outputs).
    """

    spec = WEIGHT_ALIGN_SPEC
    identity_arguments = (
        "layer_types",
        "include_linear",
        "exclude_classifier",
        "include",
        "exclude",
    )
    metric_name = "weight_align/mean_gain"

    def __init__(
        self,
        gain: float = DEFAULT_GAIN,
        eps: float = DEFAULT_EPS,
        layer_types: Sequence[type[nn.Module]] = DEFAULT_LAYER_TYPES,
        include_linear: bool = False,
        exclude_classifier: bool = True,
        include: str | None = None,
        exclude: str | None = None,
    ) -> None:
        check_weight_align_arguments(
            layer_types, include, exclude, gain, eps, include_linear, exclude_classifier
        )
        self.gain = float(gain)
        self.eps = float(eps)
        self.layer_types = tuple(layer_types)
        self.include_linear = include_linear
        self.exclude_classifier = exclude_classifier
        self.include = include
        self.exclude = exclude

    def apply(self, model: nn.Module) -> SurgerySummary:
        """Align ``model`` in place with this callback's settings (idempotent)."""
        return apply_weight_align(
            model,
            layer_types=self.layer_types,
            include_linear=self.include_linear,
            exclude_classifier=self.exclude_classifier,
            include=self.include,
            exclude=self.exclude,
            gain=self.gain,
            eps=self.eps,
        )

    def monitored(self, model: nn.Module) -> list[Tensor]:
        """The per-filter gains of every aligned layer (logged as their mean)."""
        return [m.gain for m in model.modules() if isinstance(m, WeightAlignParametrization)]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        first = self.summary is None
        super().setup(trainer, pl_module, stage)
        if first and self.summary is not None:
            self.summary.warn_if_empty(type(self).__name__)
