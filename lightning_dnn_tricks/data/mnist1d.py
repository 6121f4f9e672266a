"""MNIST-1D (Greydanus, 2020), generated locally from the ``mnist1d`` package."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import TensorDataset

from lightning_dnn_tricks.data._optional import require
from lightning_dnn_tricks.data.base import (
    DatasetSplits,
    InMemoryDataModule,
    check_fractions,
    stratified_split,
)
from lightning_dnn_tricks.validation import check_bool, check_number

#: Length of every MNIST-1D signal (the package's ``final_seq_length``).
SEQ_LEN = 40
NUM_CLASSES = 10


@contextmanager
def _global_rng_preserved() -> Iterator[None]:
    """Restore Python's and numpy's global random states (``make_dataset`` reseeds both)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


class MNIST1DDataModule(InMemoryDataModule):
    """MNIST-1D: 10 classes of length-40 1-D signals made from digit-like templates.

    Greydanus, "Scaling down deep learning with MNIST-1D" (2020). The data are generated locally
    by ``mnist1d.data.make_dataset`` with our ``seed`` (nothing is downloaded). The package's
    80/20 split gives our training+validation and test parts; ``val_fraction`` of the former is
    held out class by class with a seeded permutation. Batches are ``(x, y)`` with ``x`` float32 of
    shape ``(1, 40)`` (one channel, for ``Conv1d``) or ``(40, 1)`` with ``as_sequence=True`` (a
    length-40 sequence of scalars, for RNNs) and ``y`` int64.

    Args:
        batch_size: examples per batch (>= 1).
        num_samples: examples generated in all, a multiple of 10 (the classes are balanced), >= 100.
        as_sequence: shape examples ``(40, 1)`` for sequence models instead of ``(1, 40)``.
        val_fraction: fraction of the package's training part held out for validation, in (0, 1).
        seed: seed of the generation, the split and the shuffling (in [0, 2**32 - 1]).
        num_workers: worker processes per loader (>= 0).
        drop_last: drop the last incomplete training batch.

    Attributes:
        num_classes: 10.
        input_shape: ``(40, 1)`` if ``as_sequence`` else ``(1, 40)``.
        input_size: 1 (features per time step, or input channels).
        seq_len: 40.

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``as_sequence`` or ``drop_last`` is not a ``bool``.
        ImportError: ``mnist1d`` is not installed
            (``pip install "lightning-dnn-tricks[examples]"``).

    Examples:
        >>> dm = MNIST1DDataModule(batch_size=8, num_samples=200, as_sequence=True)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype
        ((8, 40, 1), torch.int64)

    Note:
        The signals keep the package's standardisation (one mean and standard deviation over the
        whole generated set, test part included), as in the paper's dataset. ``make_dataset``
        reseeds Python's and numpy's global generators; their states are restored afterwards.
    """

    num_classes = NUM_CLASSES
    input_size = 1
    seq_len = SEQ_LEN

    def __init__(
        self,
        batch_size: int = 64,
        num_samples: int = 5000,
        as_sequence: bool = False,
        val_fraction: float = 0.1,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        require("mnist1d.data", type(self).__name__)
        check_number("num_samples", num_samples, low=100, integer=True)
        if num_samples % NUM_CLASSES:
            raise ValueError(f"`num_samples` must be a multiple of 10, got {num_samples!r}.")
        check_bool("as_sequence", as_sequence)
        check_fractions(("val_fraction",), (val_fraction,))
        super().__init__(
            batch_size=batch_size, seed=seed, num_workers=num_workers, drop_last=drop_last
        )
        self.num_samples = num_samples
        self.as_sequence = as_sequence
        self.val_fraction = val_fraction
        self.input_shape = (SEQ_LEN, 1) if as_sequence else (1, SEQ_LEN)

    def build_datasets(self) -> DatasetSplits:
        """Generate the signals with ``mnist1d`` and hold out the validation split."""
        mnist1d = require("mnist1d.data", type(self).__name__)
        args = mnist1d.get_dataset_args()
        args.num_samples = self.num_samples
        args.seed = self.seed
        if args.final_seq_length != SEQ_LEN:  # pragma: no cover - guards a package change
            raise RuntimeError(f"mnist1d now makes length-{args.final_seq_length} signals.")
        with _global_rng_preserved():
            data = mnist1d.make_dataset(args)
        feature_dim = 2 if self.as_sequence else 1
        x = torch.as_tensor(data["x"], dtype=torch.float32).unsqueeze(feature_dim)
        y = torch.as_tensor(data["y"], dtype=torch.int64)
        x_test = torch.as_tensor(data["x_test"], dtype=torch.float32).unsqueeze(feature_dim)
        y_test = torch.as_tensor(data["y_test"], dtype=torch.int64)
        train, val = stratified_split(
            y, {"val_fraction": self.val_fraction}, self.generator("split")
        )
        return DatasetSplits(
            TensorDataset(x[train], y[train]),
            TensorDataset(x[val], y[val]),
            TensorDataset(x_test, y_test),
        )
