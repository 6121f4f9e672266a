"""Reference LightningModules used by the recipes and benchmarks (tricks never depend on them).

Examples:
    >>> from lightning_dnn_tricks.models import SequenceModel, TimmClassifier
    >>> model = TimmClassifier("resnet18", num_classes=10)
"""

from lightning_dnn_tricks.models.base import adamw
from lightning_dnn_tricks.models.predictive_coding import PredictiveCodingNetwork
from lightning_dnn_tricks.models.sequence_model import SequenceModel
from lightning_dnn_tricks.models.timm_classifier import TimmClassifier

__all__ = ["PredictiveCodingNetwork", "SequenceModel", "TimmClassifier", "adamw"]
