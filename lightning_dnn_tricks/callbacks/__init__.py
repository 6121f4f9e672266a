"""Lightning callbacks: thin adapters over ``functional`` and ``nn``, one trick per file."""

from lightning_dnn_tricks.callbacks.accelerated_pruning import AcceleratedIMP
from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.callbacks.bnsr import BNSR
from lightning_dnn_tricks.callbacks.importance_sampling import AdaptiveImportanceSampling
from lightning_dnn_tricks.callbacks.norm_loss import NormLoss
from lightning_dnn_tricks.callbacks.optimizer_support import OptimizerSupport
from lightning_dnn_tricks.callbacks.pruning import IterativeMagnitudePruning
from lightning_dnn_tricks.callbacks.step_timer import StepTimer
from lightning_dnn_tricks.callbacks.weight_align import WeightAlign
from lightning_dnn_tricks.callbacks.weight_norm_supervision import NormGroup, WeightNormSupervision

__all__ = [
    "BNSR",
    "AcceleratedIMP",
    "AdaptiveImportanceSampling",
    "IterativeMagnitudePruning",
    "NormGroup",
    "NormLoss",
    "OptimizerSupport",
    "StepTimer",
    "TrickCallback",
    "WeightAlign",
    "WeightNormSupervision",
]
