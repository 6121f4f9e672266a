"""Lightning callbacks: thin adapters over ``functional`` and ``nn``, one trick per file."""

from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.callbacks.bnsr import BNSR
from lightning_dnn_tricks.callbacks.norm_loss import NormLoss
from lightning_dnn_tricks.callbacks.step_timer import StepTimer
from lightning_dnn_tricks.callbacks.weight_align import WeightAlign

__all__ = ["BNSR", "NormLoss", "StepTimer", "TrickCallback", "WeightAlign"]
