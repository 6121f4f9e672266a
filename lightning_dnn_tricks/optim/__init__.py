"""Optimizers (plain ``torch.optim.Optimizer`` subclasses, one per file) and their factory.

``SGDG2``/``SRK2`` evaluate the gradient twice per step (closure optimizers); ``FrankWolfe`` is
FW-RNN around a base optimizer. In Lightning, add ``callbacks.OptimizerSupport`` to the Trainer: it
makes both safe, and their first step under Lightning raises without it (plain loops need none).
"""

from lightning_dnn_tricks.optim._common import preserve_buffers
from lightning_dnn_tricks.optim.factory import (
    create_optimizer,
    list_optimizers,
    optimizer_class,
    param_groups_weight_decay,
    register_optimizer,
)
from lightning_dnn_tricks.optim.frank_wolfe import FrankWolfe
from lightning_dnn_tricks.optim.sgdg2 import SGDG2, SRK2

__all__ = [
    "SGDG2",
    "SRK2",
    "FrankWolfe",
    "create_optimizer",
    "list_optimizers",
    "optimizer_class",
    "param_groups_weight_decay",
    "preserve_buffers",
    "register_optimizer",
]
