"""Training tricks from recent papers as plug-ins for PyTorch Lightning.

The sub-packages follow one rule: ``nn``, ``functional`` and ``optim`` are plain PyTorch (usable in
any training loop); ``data``, ``callbacks`` and ``models`` adapt them to Lightning.

Examples:
    >>> from lightning_dnn_tricks import list_tricks
    >>> "norm_loss" in [trick.name for trick in list_tricks()]
    True
"""

from lightning_dnn_tricks.registry import Capabilities, TrickSpec, get_trick, list_tricks
from lightning_dnn_tricks.validation import TrickConfigurationError, TrickWarning

__version__ = "0.1.0"

__all__ = [
    "Capabilities",
    "TrickConfigurationError",
    "TrickSpec",
    "TrickWarning",
    "__version__",
    "get_trick",
    "list_tricks",
]
