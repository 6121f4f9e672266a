"""Seeded, offline datamodules on the shipped example datasets, and their shuffling sampler.

Every datamodule builds its three splits in memory, deterministically from ``seed``, without
downloading anything; the training order depends only on ``(seed, epoch)`` and the loaders save
their position in Lightning checkpoints, so a run resumed at any step replays exactly the
remaining batches.

Examples:
    >>> from lightning_dnn_tricks.data import AddingProblemDataModule
    >>> dm = AddingProblemDataModule(seq_len=20, num_train=64, num_val=16, num_test=16)
    >>> dm.input_size, dm.seq_len
    (2, 20)
"""

from lightning_dnn_tricks.data._optional import require
from lightning_dnn_tricks.data.base import DatasetSplits, InMemoryDataModule
from lightning_dnn_tricks.data.digits import DigitsDataModule
from lightning_dnn_tricks.data.fashion_mnist import FashionMNISTDataModule
from lightning_dnn_tricks.data.importance_samplers import (
    AdaptiveImportanceSampler,
    DistributedAdaptiveImportanceSampler,
)
from lightning_dnn_tricks.data.indexed import (
    ImportanceCollate,
    IndexedDataset,
    importance_dataloader,
    importance_sampler,
)
from lightning_dnn_tricks.data.loader import ResumableDataLoader
from lightning_dnn_tricks.data.mnist1d import MNIST1DDataModule
from lightning_dnn_tricks.data.samplers import EpochSeededRandomSampler
from lightning_dnn_tricks.data.sequence_tasks import (
    AddingProblemDataModule,
    CopyMemoryDataModule,
    make_adding_problem,
    make_copy_memory,
)

__all__ = [
    "AdaptiveImportanceSampler",
    "AddingProblemDataModule",
    "CopyMemoryDataModule",
    "DatasetSplits",
    "DigitsDataModule",
    "DistributedAdaptiveImportanceSampler",
    "EpochSeededRandomSampler",
    "FashionMNISTDataModule",
    "ImportanceCollate",
    "InMemoryDataModule",
    "IndexedDataset",
    "MNIST1DDataModule",
    "ResumableDataLoader",
    "importance_dataloader",
    "importance_sampler",
    "make_adding_problem",
    "make_copy_memory",
    "require",
]
