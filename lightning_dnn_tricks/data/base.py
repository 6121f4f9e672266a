"""Base of the example datamodules: seeded in-memory splits and reproducible loaders."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from itertools import accumulate
from typing import NamedTuple

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Sampler, TensorDataset

from lightning_dnn_tricks.data._seeding import seeded_generator
from lightning_dnn_tricks.data.loader import ResumableDataLoader
from lightning_dnn_tricks.data.samplers import EpochSeededRandomSampler
from lightning_dnn_tricks.validation import check_bool, check_number

#: Largest accepted seed (the range numpy's legacy global seeding accepts).
MAX_SEED = 2**32 - 1


class DatasetSplits(NamedTuple):
    """The three splits an :class:`InMemoryDataModule` builds."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


def stratified_split(
    labels: torch.Tensor,
    fractions: dict[str, float],
    generator: torch.Generator,
) -> list[torch.Tensor]:
    """Split the indices of ``labels`` class by class: the remainder, then one part per fraction.

    Each class's indices are shuffled with ``generator`` and cut into ``round(fraction * count)``
    pieces; the parts are returned sorted (the dataset's order). ``fractions`` maps the argument
    name to its value, so that an empty part raises a ``ValueError`` naming the argument.

    Not scikit-learn's ``train_test_split(stratify=...)``: :class:`FashionMNISTDataModule` uses
    this split and lives in the core, which must not need scikit-learn (an ``examples`` extra);
    and a seeded ``torch.Generator`` keeps the splits identical across machines and numpy
    versions, in one pass for any number of parts.
    """
    parts: list[list[torch.Tensor]] = [[] for _ in range(len(fractions) + 1)]
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        counts = [round(fraction * len(members)) for fraction in fractions.values()]
        bounds = list(accumulate([len(members) - sum(counts), *counts], initial=0))
        for part, start, stop in zip(parts, bounds[:-1], bounds[1:], strict=True):
            part.append(members[start:stop])
    joined = [torch.cat(part).sort().values for part in parts]
    for name, indices in zip(["1 - " + " - ".join(fractions), *fractions], joined, strict=True):
        if len(indices) == 0:
            raise ValueError(
                f"`{name}` leaves an empty split of {len(labels)} examples "
                f"(fractions {fractions}): choose a larger fraction or more examples."
            )
    return joined


class InMemoryDataModule(pl.LightningDataModule, ABC):
    """Base datamodule: three in-memory ``TensorDataset`` splits built deterministically from seed.

    Subclasses implement :meth:`build_datasets` (pure function of their arguments and ``seed``)
    and set the metadata attributes at construction, so that models can be sized before
    ``setup``. The splits are built once, lazily, by :meth:`setup` (idempotent; the dataloader
    methods call it too). The training loader shuffles with an :class:`EpochSeededRandomSampler`
    (order depends only on ``(seed, epoch)``); the validation and test loaders keep the dataset
    order. Every loader has its own seeded ``torch.Generator``, so iterating never advances the
    global random generators.

    Args:
        batch_size: examples per batch (>= 1).
        seed: seed of the data generation, the splits and the shuffling (in [0, 2**32 - 1]).
        num_workers: worker processes per loader (>= 0); workers persist across epochs when > 0.
        drop_last: drop the last incomplete training batch (validation and test keep it).

    Attributes:
        num_classes: number of target classes, or ``None`` for regression targets.
        input_shape: shape of one input example ``x`` (without the batch dimension).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``drop_last`` is not a ``bool``.

    Examples:
        >>> class Ones(InMemoryDataModule):
        ...     num_classes, input_shape = 2, (3,)
        ...
        ...     def build_datasets(self) -> DatasetSplits:
        ...         sets = [TensorDataset(torch.ones(n, 3), torch.zeros(n)) for n in (8, 2, 2)]
        ...         return DatasetSplits(*sets)
        >>> next(iter(Ones(batch_size=4, seed=0).train_dataloader()))[0].shape
        torch.Size([4, 3])
    """

    num_classes: int | None = None
    input_shape: tuple[int, ...] = ()

    def __init__(
        self, *, batch_size: int, seed: int, num_workers: int = 0, drop_last: bool = False
    ) -> None:
        super().__init__()
        check_number("batch_size", batch_size, low=1, integer=True)
        check_number("seed", seed, low=0, high=MAX_SEED, integer=True)
        check_number("num_workers", num_workers, low=0, integer=True)
        check_bool("drop_last", drop_last)
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.drop_last = drop_last
        self._splits: DatasetSplits | None = None
        self.save_hyperparameters()

    @abstractmethod
    def build_datasets(self) -> DatasetSplits:
        """Build the train, validation and test datasets from the arguments and ``self.seed``."""

    def generator(self, *keys: int | str) -> torch.Generator:
        """A fresh ``torch.Generator`` seeded from ``self.seed`` and ``keys`` (e.g. the split)."""
        return seeded_generator(self.seed, *keys)

    def setup(self, stage: str | None = None) -> None:
        """Build the splits on first call; later calls do nothing."""
        if self._splits is not None:
            return
        splits = self.build_datasets()
        if self.drop_last and len(splits.train) < self.batch_size:
            raise ValueError(
                f"`batch_size` must be at most the training split's size {len(splits.train)} "
                f"when `drop_last` is True (no batch would remain), got {self.batch_size}."
            )
        self._splits = splits

    @property
    def splits(self) -> DatasetSplits:
        """The train/val/test datasets (built on first access)."""
        self.setup()
        assert self._splits is not None
        return self._splits

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches, in an order that depends only on ``(seed, epoch)``."""
        train = self.splits.train
        sampler = EpochSeededRandomSampler(train, seed=self.seed)
        return self._loader(train, "train", sampler=sampler, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        """Validation batches in dataset order."""
        return self._loader(self.splits.val, "val")

    def test_dataloader(self) -> DataLoader:
        """Test batches in dataset order."""
        return self._loader(self.splits.test, "test")

    def _loader(
        self,
        dataset: TensorDataset,
        stage: str,
        sampler: Sampler[int] | None = None,
        drop_last: bool = False,
    ) -> DataLoader:
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            shuffle=False,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            drop_last=drop_last,
            generator=self.generator("loader", stage),
        )


def check_fractions(names: Sequence[str], values: Sequence[float]) -> None:
    """Raise ``ValueError`` unless each fraction is in (0, 1) and they sum to less than 1."""
    for name, value in zip(names, values, strict=True):
        check_number(name, value, low=0, high=1, low_inclusive=False, high_inclusive=False)
    if len(names) > 1:
        total = " + ".join(names)
        check_number(total, sum(values), low=0, high=1, high_inclusive=False)
