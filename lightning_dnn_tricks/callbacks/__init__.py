"""Lightning callbacks: thin adapters over ``functional`` and ``nn``, one trick per file."""

from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.callbacks.norm_loss import NormLoss
from lightning_dnn_tricks.callbacks.step_timer import StepTimer

__all__ = ["NormLoss", "StepTimer", "TrickCallback"]
