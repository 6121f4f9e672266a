"""Lightning callbacks: thin adapters over ``functional`` and ``nn``, one trick per file."""

from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.callbacks.norm_loss import NormLoss

__all__ = ["NormLoss", "TrickCallback"]
