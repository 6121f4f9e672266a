"""Lightning adapter for BNSR: BatchNorm layers are swapped for BNSR layers in ``setup``."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_dnn_tricks.callbacks._lightning import syncs_batchnorm
from lightning_dnn_tricks.callbacks.surgery import SurgeryCallback
from lightning_dnn_tricks.functional.bnsr import apply_bnsr, check_bnsr_arguments
from lightning_dnn_tricks.nn.bnsr import BNSR_CLASSES
from lightning_dnn_tricks.nn.bnsr_warps import WarpName
from lightning_dnn_tricks.nn.surgery import SurgerySummary
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick

BNSR_SPEC = register_trick(
    TrickSpec(
        name="bnsr",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.bnsr:BNSR",
        summary="BatchNorm followed by a skewness-reducing Yeo-Johnson warp per channel "
        "(our reconstruction).",
        paper="Ding, Martin, Li, BNSR, ICPR 2020",
        capabilities=Capabilities(
            changes_structure=True,
            precisions=("32-true", "bf16-mixed"),
            manual_optimization=True,
            effects=frozenset({"replaces_norm_layers"}),
        ),
        reconstruction=True,
        docs_page="methods/bnsr.md",
    )
)


class BNSR(SurgeryCallback):
    """BNSR (Ding et al., ICPR 2020): BatchNorm with skewness reduction — our reconstruction.

    In ``setup`` (before the optimizers are built and before a checkpoint is restored, so
    checkpoints restore into the changed model) every ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` and
    timm ``BatchNormAct2d`` becomes a BNSR layer of the same class, sharing its parameters and
    statistics and keeping timm's fused activation and dropout. Per channel, in training mode::

        x_hat = (x - mean) / sqrt(var + eps)          # BatchNorm's batch statistics
        s     = mean(x_hat^3)                         # batch skewness
        lam   = 1 - alpha * tanh(s)                   # clipped to [-1, 3]
        y     = YJ(x_hat; lam)                        # Yeo-Johnson warp (lam = 1: identity)
        out   = gamma * (y - mean(y)) / sqrt(var(y) + eps) + beta

    Running averages of the BatchNorm statistics, of ``lam`` and of ``y``'s mean and variance
    (BatchNorm's ``momentum`` rule) make eval mode deterministic. Applying twice changes nothing
    more; the summary is printed once (rank zero) and a warning is raised when no layer matched.
    The mean running exponent over all BNSR layers is logged as ``bnsr/mean_exponent``.

    Args:
        alpha: warp strength in ``[0, 2]``; ``0`` keeps BatchNorm's output exactly.
        warp: ``"yeo_johnson"`` or ``"identity"`` (exactly BatchNorm, for ablations).
        newton_steps: Newton steps on ``lam`` toward zero batch skewness (``0`` to ``10``).
        include: regular expression on module names; only matching layers are replaced.
        exclude: regular expression on module names to leave out.
        compiled: run each layer's normalisation through ``torch.compile``: the same maths as
            fused kernels, which more than halves BNSR's extra cost per step on CPU (see the
            method card). The first steps compile (about 20-60 s; a C++ compiler is needed on
            CPU); worth it for runs longer than a few minutes.

    Raises:
        ValueError: an argument is out of range (the message names it).
        TrickConfigurationError: at ``setup``, the Trainer uses an unsupported precision
            (``16-mixed`` is untested) or strategy, or ``sync_batchnorm=True`` (Lightning would
            convert the BNSR layers back to plain ``SyncBatchNorm``).
        TrickConfigurationError: at resume, the checkpoint was written with another ``alpha``,
            ``warp``, ``newton_steps`` or layer selection (a change of ``compiled`` is accepted
            with a warning).

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_dnn_tricks.callbacks import BNSR
        >>> trainer = pl.Trainer(callbacks=[BNSR(alpha=1.0)], logger=False)

    Note:
        The paper's body was not available: the warp (Yeo-Johnson with a skewness-driven exponent),
        ``alpha = 1``, the clipping of ``lam``, the Newton mode and the running average of ``lam``
        are our reconstruction (see its method card). Statistics are computed in float32 under
        ``bf16-mixed``.
    """

    spec = BNSR_SPEC
    identity_arguments = ("include", "exclude")
    resume_may_change = ("compiled",)
    metric_name = "bnsr/mean_exponent"

    def __init__(
        self,
        alpha: float = 1.0,
        warp: WarpName = "yeo_johnson",
        newton_steps: int = 0,
        include: str | None = None,
        exclude: str | None = None,
        compiled: bool = False,
    ) -> None:
        check_bnsr_arguments(warp, alpha, newton_steps, include, exclude, compiled)
        self.alpha = float(alpha)
        self.warp: WarpName = warp
        self.newton_steps = newton_steps
        self.include = include
        self.exclude = exclude
        self.compiled = compiled

    def apply(self, model: torch.nn.Module) -> SurgerySummary:
        """Replace ``model``'s BatchNorm layers with this callback's settings (idempotent)."""
        return apply_bnsr(
            model,
            alpha=self.alpha,
            warp=self.warp,
            newton_steps=self.newton_steps,
            include=self.include,
            exclude=self.exclude,
            compiled=self.compiled,
        )

    def check_trainer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().check_trainer(trainer, pl_module)
        if syncs_batchnorm(trainer):
            self._refuse(
                "sync_batchnorm=True would turn the BNSR layers into plain SyncBatchNorm layers "
                "(the warp would be lost).",
                "Set sync_batchnorm=False (BNSR uses per-process batch statistics, like "
                "BatchNorm under DDP).",
            )

    def monitored(self, model: torch.nn.Module) -> list[Tensor]:
        """The running exponents ``running_lam`` of every BNSR layer (logged as their mean)."""
        return [
            m.running_lam
            for m in model.modules()
            if isinstance(m, BNSR_CLASSES) and m.running_lam is not None
        ]
