"""scikit-learn's 8x8 handwritten digits as a seeded, stratified, normalised datamodule."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_dnn_tricks.data._optional import require
from lightning_dnn_tricks.data.base import (
    DatasetSplits,
    InMemoryDataModule,
    check_fractions,
    stratified_split,
)
from lightning_dnn_tricks.validation import check_choice, check_number

Channels = Literal[1, 3]
CHANNELS: tuple[Channels, ...] = (1, 3)
NATIVE_SIZE = 8


class DigitsDataModule(InMemoryDataModule):
    """The UCI handwritten digits (1797 real 8x8 grey images, 10 classes) from scikit-learn.

    The images (values 0..16) ship with scikit-learn, so nothing is downloaded. They are split
    class by class with a seeded permutation (stratified), optionally resized with bilinear
    interpolation (e.g. to 32 for timm backbones), normalised with the training split's pixel mean
    and standard deviation, and optionally repeated to three channels. Batches are ``(x, y)`` with
    ``x`` float32 of shape ``(channels, image_size, image_size)`` and ``y`` int64 class indices.

    Args:
        batch_size: examples per batch (>= 1).
        image_size: side of the square images (>= 8); other sizes than 8 are bilinearly resized.
        channels: ``1`` (grey) or ``3`` (the grey channel repeated, for RGB backbones).
        val_fraction: fraction of each class held out for validation, in (0, 1).
        test_fraction: fraction of each class held out for testing, in (0, 1); the two fractions
            sum to less than 1.
        seed: seed of the split and the shuffling (in [0, 2**32 - 1]).
        num_workers: worker processes per loader (>= 0).
        drop_last: drop the last incomplete training batch.

    Attributes:
        num_classes: 10.
        input_shape: ``(channels, image_size, image_size)``.
        mean: the training split's pixel mean used for normalisation (after ``setup``).
        std: the training split's pixel standard deviation (after ``setup``).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``drop_last`` is not a ``bool``.
        ImportError: scikit-learn is not installed
            (``pip install "lightning-dnn-tricks[examples]"``).

    Examples:
        >>> dm = DigitsDataModule(batch_size=16, image_size=32, channels=3)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((16, 3, 32, 32), torch.int64)

    Note:
        The three channels are a stride-0 view of one grey channel, so ``channels=3`` costs no
        extra memory until batches are collated.
    """

    num_classes = 10

    def __init__(
        self,
        batch_size: int = 64,
        image_size: int = NATIVE_SIZE,
        channels: Channels = 1,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        require("sklearn.datasets", type(self).__name__)
        check_number("image_size", image_size, low=NATIVE_SIZE, integer=True)
        check_number("channels", channels, integer=True)
        check_choice("channels", channels, CHANNELS)
        check_fractions(("val_fraction", "test_fraction"), (val_fraction, test_fraction))
        super().__init__(
            batch_size=batch_size, seed=seed, num_workers=num_workers, drop_last=drop_last
        )
        self.image_size = image_size
        self.channels = channels
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction
        self.input_shape = (channels, image_size, image_size)
        self.mean: float | None = None
        self.std: float | None = None

    def build_datasets(self) -> DatasetSplits:
        """Load, split (stratified), resize and normalise the digits."""
        digits = require("sklearn.datasets", type(self).__name__).load_digits()
        images = torch.as_tensor(digits.images, dtype=torch.float32).unsqueeze(1)
        labels = torch.as_tensor(digits.target, dtype=torch.int64)
        if self.image_size != NATIVE_SIZE:
            size = (self.image_size, self.image_size)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        fractions = {"val_fraction": self.val_fraction, "test_fraction": self.test_fraction}
        parts = stratified_split(labels, fractions, self.generator("split"))
        mean, std = images[parts[0]].mean(), images[parts[0]].std()
        images = (images - mean) / std
        self.mean, self.std = float(mean), float(std)
        return DatasetSplits(
            *(
                TensorDataset(images[part].expand(-1, self.channels, -1, -1), labels[part])
                for part in parts
            )
        )
