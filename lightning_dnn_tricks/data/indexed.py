"""Datasets and loaders whose batches carry each example's index and importance weight.

An importance batch is a dict (see :mod:`lightning_dnn_tricks.functional.importance_sampling`)::

    {"example": <the wrapped dataset's batch, collated as before, e.g. [x, y]>,
     "index":   int64 (B,)   dataset indices,
     "weight":  float32 (B,) importance weights 1 / (n p_i) (1 for examples not drawn by an
                             importance sampler),
     "record":  float32 (B, 3) slots that importance_weighted_mean fills in place}
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    default_collate,
)

from lightning_dnn_tricks.data._seeding import seeded_generator
from lightning_dnn_tricks.data.importance_samplers import (
    AdaptiveImportanceSampler,
    DistributedAdaptiveImportanceSampler,
)
from lightning_dnn_tricks.data.samplers import EpochSeededRandomSampler
from lightning_dnn_tricks.functional.importance_sampling import (
    EXAMPLE_KEY,
    INDEX_KEY,
    RECORD_APPLIED,
    RECORD_KEY,
    RECORD_WIDTH,
    WEIGHT_KEY,
)
from lightning_dnn_tricks.validation import check_number

#: DataLoader settings copied when a loader is rebuilt around an importance sampler.
_LOADER_SETTINGS = (
    "num_workers",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "persistent_workers",
    "pin_memory_device",
)

#: The samplers of a plain ``DataLoader`` (``shuffle=False``/``True``, the library's datamodules'
#: epoch-seeded shuffle) and Lightning's DDP replacement of them: uniform orders, the only ones an
#: importance sampler may replace. Matched by exact type: a subclass may draw in a way of its own.
PLAIN_SAMPLERS: tuple[type, ...] = (
    SequentialSampler,
    RandomSampler,
    DistributedSampler,
    EpochSeededRandomSampler,
)


class IndexedDataset(Dataset[dict[str, Any]]):
    """Wrap a map-style dataset so that each item carries its index and importance weight.

    ``dataset[key]`` with ``key`` an index ``i`` gives ``{"example": dataset[i], "index": i,
    "weight": 1.0}``; with ``key = (i, w)`` (what the importance samplers yield) the weight is
    ``w``. :class:`ImportanceCollate` turns a list of items into an importance batch.

    Args:
        dataset: a map-style dataset with ``len``.

    Raises:
        ValueError: ``dataset`` has no ``len`` or no ``__getitem__``.

    Examples:
        >>> import torch
        >>> data = IndexedDataset(torch.utils.data.TensorDataset(torch.arange(3.0)))
        >>> item = data[(2, 0.5)]
        >>> item["index"], item["weight"], item["example"][0].item()
        (2, 0.5, 2.0)
    """

    def __init__(self, dataset: Dataset[Any]) -> None:
        if not isinstance(dataset, Sized) or not hasattr(dataset, "__getitem__"):
            raise ValueError(f"`dataset` must be a map-style dataset with len, got {dataset!r}.")
        self.dataset: Any = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, float]) -> dict[str, Any]:
        index, weight = key if isinstance(key, tuple) else (key, 1.0)
        return {EXAMPLE_KEY: self.dataset[index], INDEX_KEY: int(index), WEIGHT_KEY: float(weight)}


class ImportanceCollate:
    """Collate :class:`IndexedDataset` items into an importance batch.

    The examples are collated by ``example_collate`` (the wrapped loader's ``collate_fn``;
    default: torch's ``default_collate``), the indices and weights into tensors, and a
    ``"record"`` tensor of NaN (its "applied" column 0) is added for
    :func:`~lightning_dnn_tricks.functional.importance_weighted_mean` to fill.

    Args:
        example_collate: how to collate the wrapped dataset's items.
    """

    def __init__(self, example_collate: Callable[[list[Any]], Any] | None = None) -> None:
        self.example_collate = example_collate or default_collate

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        record = torch.full((len(items), RECORD_WIDTH), float("nan"))
        record[:, RECORD_APPLIED] = 0.0
        return {
            EXAMPLE_KEY: self.example_collate([item[EXAMPLE_KEY] for item in items]),
            INDEX_KEY: torch.tensor([item[INDEX_KEY] for item in items], dtype=torch.int64),
            WEIGHT_KEY: torch.tensor([item[WEIGHT_KEY] for item in items], dtype=torch.float32),
            RECORD_KEY: record,
        }


def find_importance_sampler(loader: DataLoader[Any]) -> AdaptiveImportanceSampler | None:
    """The importance sampler of ``loader`` (its sampler or its batch sampler's), if any."""
    for candidate in (loader.sampler, getattr(loader.batch_sampler, "sampler", None)):
        if isinstance(candidate, AdaptiveImportanceSampler):
            return candidate
    return None


def custom_sampling(loader: DataLoader[Any]) -> tuple[str, Any] | None:
    """What of ``loader`` chooses the examples in a way of its own, or ``None`` for a plain loader.

    Returns ``("batch_sampler", b)`` for a batch sampler that is not torch's ``BatchSampler``
    and ``("sampler", s)`` for a sampler (of the loader or of its ``BatchSampler``) that is not
    one of :data:`PLAIN_SAMPLERS`, e.g. a ``WeightedRandomSampler`` or a ``SubsetRandomSampler``.

    Examples:
        >>> import torch
        >>> data = torch.arange(4.0)
        >>> custom_sampling(DataLoader(data, batch_size=2, shuffle=True)) is None
        True
        >>> weighted = torch.utils.data.WeightedRandomSampler([1.0, 1, 1, 5], num_samples=4)
        >>> custom_sampling(DataLoader(data, batch_size=2, sampler=weighted))[0]
        'sampler'
    """
    batch_sampler = loader.batch_sampler
    if batch_sampler is not None and type(batch_sampler) is not BatchSampler:
        return "batch_sampler", batch_sampler
    for sampler in (loader.sampler, getattr(batch_sampler, "sampler", None)):
        if sampler is not None and type(sampler) not in PLAIN_SAMPLERS:
            return "sampler", sampler
    return None


_BUILD_IT = "Build it with lightning_dnn_tricks.data.importance_dataloader(dataset, ...)"


def rebuild_problem(loader: DataLoader[Any]) -> tuple[str, str] | None:
    """Why ``loader`` cannot be rebuilt around an importance sampler, as ``(conflict, fix)``.

    ``None`` for a plain loader: a map-style dataset with ``len``, a ``batch_size``, one of
    :data:`PLAIN_SAMPLERS` and no importance batches yet. A sampler or batch sampler of the
    loader's own (:func:`custom_sampling`) is a problem: the rebuild would drop it silently.
    """
    if isinstance(loader.dataset, IndexedDataset) or isinstance(
        loader.collate_fn, ImportanceCollate
    ):
        return (
            "the training loader builds importance batches but does not draw with an "
            "AdaptiveImportanceSampler (under DDP: was it built before the process group "
            "existed, outside train_dataloader?).",
            f"{_BUILD_IT} inside train_dataloader, or return a plain DataLoader.",
        )
    custom = custom_sampling(loader)
    if custom is not None:
        role, sampler = custom
        name = type(sampler).__name__
        if isinstance(sampler, DistributedSampler):
            name += (
                " (under DDP, Lightning wraps a loader's own sampler, any but SequentialSampler "
                "and RandomSampler, in DistributedSamplerWrapper)"
            )
        return (
            f"the training loader's {role} is {name}, which rebuilding the loader around the "
            "importance sampler would drop: importance sampling draws from its own "
            "distribution p_i and weights each loss by 1/(n p_i), and the two draws would not "
            "compose into an unbiased gradient.",
            "Remove the sampler (a plain or shuffled DataLoader is rebuilt by the callback). If "
            "its weights re-weight the objective (e.g. class balance), multiply the per-example "
            "losses by them before importance_weighted_mean instead; to start the draws from "
            "them, build the loader with lightning_dnn_tricks.data.importance_dataloader("
            "dataset, batch_size, sampler=s) after s.set_probabilities(weights) (the scores "
            "then start at initial_score and adapt).",
        )
    if loader.batch_size is None or not isinstance(loader.dataset, Sized):
        return (
            "the training loader has no batch_size or its dataset no len (batch_size=None or "
            "an iterable dataset).",
            f"{_BUILD_IT}.",
        )
    return None


def importance_sampler(
    dataset: Sized,
    batch_size: int,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    num_replicas: int | None = None,
    rank: int | None = None,
) -> AdaptiveImportanceSampler:
    """The single-process sampler, or the distributed one when there are several ranks.

    Several ranks: ``num_replicas > 1``, or ``num_replicas`` not given and an initialised process
    group with a world size above 1 (``num_samples`` is then per rank).
    """
    if num_replicas is not None:
        check_number("num_replicas", num_replicas, low=1, integer=True)
    if rank is not None:
        check_number("rank", rank, low=0, integer=True)
    if num_replicas is None and dist.is_available() and dist.is_initialized():
        num_replicas = dist.get_world_size()
    if num_replicas is not None and num_replicas > 1:
        return DistributedAdaptiveImportanceSampler(
            dataset, batch_size, num_replicas, rank, num_samples=num_samples, seed=seed
        )
    return AdaptiveImportanceSampler(dataset, batch_size, num_samples=num_samples, seed=seed)


def importance_dataloader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    sampler: AdaptiveImportanceSampler | None = None,
    num_samples: int | None = None,
    seed: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    **loader_kwargs: Any,
) -> DataLoader[Any]:
    """A training ``DataLoader`` of importance batches drawn by an adaptive importance sampler.

    Wraps ``dataset`` in :class:`IndexedDataset`, collates with :class:`ImportanceCollate` and
    draws with ``sampler`` (default: :func:`importance_sampler`, distributed when a process group
    with several ranks is initialised, as inside a Lightning DDP ``train_dataloader``). The loader
    has its own seeded ``generator`` (the global random state is not advanced). Return it from a
    ``train_dataloader`` to build the data explicitly; otherwise the
    :class:`~lightning_dnn_tricks.callbacks.AdaptiveImportanceSampling` callback rebuilds the
    training loader this way by itself.

    Args:
        dataset: the map-style training dataset.
        batch_size: examples per batch on each rank (>= 1).
        sampler: an importance sampler over ``dataset`` (its ``batch_size`` should match).
        num_samples: draws per epoch (per rank), when the sampler is built here.
        seed: seed of the sampler built here and of the loader's generator.
        collate_fn: how to collate the dataset's own items (default: ``default_collate``).
        **loader_kwargs: other ``DataLoader`` arguments (``num_workers``, ``pin_memory``, ...).

    Examples:
        >>> import torch
        >>> data = torch.utils.data.TensorDataset(torch.randn(10, 3), torch.arange(10))
        >>> batch = next(iter(importance_dataloader(data, batch_size=4)))
        >>> sorted(batch), batch["weight"].tolist()
        (['example', 'index', 'record', 'weight'], [1.0, 1.0, 1.0, 1.0])
    """
    if sampler is None:
        sampler = importance_sampler(dataset, batch_size, num_samples=num_samples, seed=seed)  # type: ignore[arg-type]
    loader_kwargs.setdefault("generator", seeded_generator(seed, "importance-loader"))
    return DataLoader(
        IndexedDataset(dataset),
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=ImportanceCollate(collate_fn),
        **loader_kwargs,
    )


def importance_loader_like(
    loader: DataLoader[Any], sampler: AdaptiveImportanceSampler, seed: int = 0
) -> DataLoader[Any]:
    """Rebuild ``loader`` around ``sampler``: same dataset, batch size, collate and workers."""
    settings = {name: getattr(loader, name) for name in _LOADER_SETTINGS if hasattr(loader, name)}
    if settings.get("num_workers", 0) > 0:
        settings["prefetch_factor"] = loader.prefetch_factor
    else:
        settings.pop("persistent_workers", None)
    return importance_dataloader(
        loader.dataset,
        batch_size=sampler.batch_size,
        sampler=sampler,
        seed=seed,
        collate_fn=loader.collate_fn,
        drop_last=loader.drop_last,
        **settings,
    )
