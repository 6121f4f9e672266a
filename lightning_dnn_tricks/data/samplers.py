"""Shuffling sampler whose order is a function of ``(seed, epoch)`` only."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
from torch.utils.data import RandomSampler

from lightning_dnn_tricks.data._seeding import seeded_generator
from lightning_dnn_tricks.validation import check_number


class EpochSeededRandomSampler(RandomSampler):
    """Random permutation of the dataset indices that depends only on ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` at the start of every training epoch, so a run resumed from a
    checkpoint taken at an epoch boundary draws exactly the orders of an uninterrupted run, whatever
    the global random state is. Each epoch draws a fresh permutation without replacement from a
    private ``torch.Generator`` seeded with a hash of ``(seed, epoch)``; the global generators are
    neither read nor advanced.

    Args:
        data_source: the dataset (anything with ``len``).
        seed: base seed (>= 0).
        epoch: the epoch whose order to draw until :meth:`set_epoch` is called (>= 0).

    Raises:
        ValueError: ``seed`` or ``epoch`` is not a non-negative integer.

    Examples:
        >>> sampler = EpochSeededRandomSampler(range(5), seed=1)
        >>> sampler.set_epoch(3)
        >>> sorted(sampler)
        [0, 1, 2, 3, 4]

    Note:
        It subclasses ``RandomSampler`` so that Lightning treats it as shuffled: under DDP Lightning
        replaces it by a ``DistributedSampler(shuffle=True)`` seeded with the global seed of
        ``seed_everything`` (``PL_GLOBAL_SEED``), whose order is again a function of the epoch.
    """

    def __init__(self, data_source: Sized, seed: int = 0, epoch: int = 0) -> None:
        check_number("seed", seed, low=0, integer=True)
        check_number("epoch", epoch, low=0, integer=True)
        super().__init__(data_source)
        self.seed = seed
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` for the next iteration."""
        check_number("epoch", epoch, low=0, integer=True)
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = seeded_generator(self.seed, "sampler", self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()

    def state_dict(self) -> dict[str, int]:
        """Return ``{"seed": ..., "epoch": ...}``: everything that determines the order."""
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore the seed and epoch saved by :meth:`state_dict`."""
        seed, epoch = state_dict["seed"], state_dict["epoch"]
        check_number("seed", seed, low=0, integer=True)
        check_number("epoch", epoch, low=0, integer=True)
        self.seed = seed
        self.epoch = epoch
