"""The backbone matrix of the conformance suites: one model per layer family timm uses."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import lightning.pytorch as pl
import torch
from timm.layers import GroupNormAct, StdConv2d

from lightning_dnn_tricks.models import SequenceModel, TimmClassifier

IMAGE_SHAPE = (3, 32, 32)
SEQUENCE_SHAPE = (12, 2)


def sgd(params: object) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)  # type: ignore[arg-type]


def timm_classifier(model_name: str, **model_kwargs: object) -> Callable[[], pl.LightningModule]:
    return lambda: TimmClassifier(
        model_name, num_classes=4, in_chans=3, model_kwargs=model_kwargs, optimizer=sgd
    )


# name -> (builder, layer family it covers)
BACKBONES: dict[str, tuple[Callable[[], pl.LightningModule], str]] = {
    "resnet18": (timm_classifier("resnet18"), "Conv2d + BatchNorm2d"),
    "mobilenetv3_small_050": (
        timm_classifier("mobilenetv3_small_050"),
        "BatchNormAct2d, depthwise convs, timm Linear",
    ),
    "convnext_atto": (timm_classifier("convnext_atto"), "LayerNorm2d"),
    "vit_tiny": (timm_classifier("vit_tiny_patch16_224", img_size=32), "ViT (Linear, LayerNorm)"),
    "resnetv2_stdconv_gn": (
        timm_classifier(
            "resnetv2_50d_gn",
            layers=(1, 1, 1, 1),
            conv_layer=StdConv2d,
            norm_layer=partial(GroupNormAct, num_groups=8),
        ),
        "StdConv2d + GroupNormAct",
    ),
    "sequence_rnn": (
        lambda: SequenceModel(cell="rnn", input_size=2, hidden_size=16, optimizer=sgd),
        "vanilla tanh RNN",
    ),
}


def random_batches(backbone: str, n: int = 8, seed: int = 0) -> torch.utils.data.DataLoader:
    """A few random batches shaped for ``backbone`` (images with labels, or sequences)."""
    generator = torch.Generator().manual_seed(seed)
    if backbone.startswith("sequence"):
        x = torch.randn(n, *SEQUENCE_SHAPE, generator=generator)
        y = torch.randn(n, 1, generator=generator)
    else:
        x = torch.randn(n, *IMAGE_SHAPE, generator=generator)
        y = torch.randint(0, 4, (n,), generator=generator)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
