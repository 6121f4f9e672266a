"""Samplers that draw training examples with replacement from a distribution that changes.

Used by adaptive importance sampling (Liu et al., ICPR 2020; the schedule is our
reconstruction): the :class:`~lightning_dnn_tricks.callbacks.AdaptiveImportanceSampling` callback
sets the probabilities, the sampler draws and yields each example's index with its importance
weight ``1 / (n p_i)``, taken from the very probabilities it was drawn with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from lightning_dnn_tricks.data._seeding import derive_seed
from lightning_dnn_tricks.functional.importance_sampling import importance_weights
from lightning_dnn_tricks.validation import check_number


def _size(data_source: Sized | int) -> int:
    if isinstance(data_source, int) and not isinstance(data_source, bool):
        size = data_source
    elif isinstance(data_source, Sized):
        size = len(data_source)
    else:
        raise ValueError(f"`data_source` must be a sized dataset or a count, got {data_source!r}.")
    check_number("data_source", size, low=1, integer=True)
    return size


class AdaptiveImportanceSampler(Sampler[tuple[int, float]]):
    """Draws ``num_samples`` examples per epoch with replacement from adjustable probabilities.

    The draws come in blocks of ``batch_size`` (one block per batch when the loader's batch size
    matches): each block is one ``torch.multinomial`` call on the current :attr:`probabilities`
    with a private ``torch.Generator`` seeded from ``(seed, epoch)`` at the start of every epoch.
    A change of the probabilities (:meth:`set_probabilities`) takes effect at the next block. The
    sampler yields ``(index, weight)`` pairs with ``weight = 1 / (n p_index)``;
    :class:`~lightning_dnn_tricks.data.IndexedDataset` turns them into batch entries.

    Resume: :meth:`state_dict` holds the epoch, the blocks drawn so far in it, the generator state
    and the probabilities; after :meth:`load_state_dict` the next iteration of the same epoch
    continues with the next block, so a run resumed mid-epoch draws exactly the remaining batches
    of an uninterrupted run. (Use it with a loader that does not skip batches itself.)

    Args:
        data_source: the dataset (anything with ``len``) or the number of examples ``n`` (>= 1).
        batch_size: examples per block (>= 1); set it to the loader's batch size.
        num_samples: draws per epoch (>= 1); default ``n``.
        seed: base seed of the draws (>= 0).

    Raises:
        ValueError: an argument is out of range (the message names it).

    Examples:
        >>> sampler = AdaptiveImportanceSampler(4, batch_size=2, seed=0)
        >>> [weight for _, weight in sampler]   # uniform probabilities: every weight is 1
        [1.0, 1.0, 1.0, 1.0]
        >>> sampler.set_probabilities(torch.tensor([5.0, 1.0, 1.0, 1.0]))   # normalised
        >>> sampler.probabilities[0].item()
        0.625

    Note:
        With ``num_workers > 0`` the DataLoader asks for indices ahead of training, so a new
        distribution reaches the batches ``prefetch_factor * num_workers`` batches later and a
        resumed run is exact only with ``num_workers=0``. The weights stay correct either way.
    """

    num_replicas: int = 1
    rank: int = 0

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.num_examples = _size(data_source)
        check_number("batch_size", batch_size, low=1, integer=True)
        if num_samples is not None:
            check_number("num_samples", num_samples, low=1, integer=True)
        check_number("seed", seed, low=0, integer=True)
        self.batch_size = batch_size
        self.num_samples = self.num_examples if num_samples is None else num_samples
        self.seed = seed
        self.epoch = 0
        self.probabilities = torch.full(
            (self.num_examples,), 1.0 / self.num_examples, dtype=torch.float64
        )
        self._generator = torch.Generator()
        self._draw_epoch = -1
        self._blocks_drawn = 0
        self._resume: dict[str, Any] | None = None
        self._serve_nothing = False

    @property
    def num_blocks(self) -> int:
        """Blocks (batches) per epoch: ``ceil(num_samples / batch_size)``."""
        return math.ceil(self.num_samples / self.batch_size)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws the next iteration makes (Lightning calls it)."""
        check_number("epoch", epoch, low=0, integer=True)
        self.epoch = epoch

    def set_probabilities(self, probabilities: torch.Tensor) -> None:
        """Draw the next blocks from ``probabilities`` (non-negative, shape ``(n,)``; normalised).

        Raises:
            ValueError: wrong shape, a negative or non-finite entry, or a zero sum.
        """
        p = self._checked(probabilities)
        self.probabilities = p / p.sum()

    def _checked(self, probabilities: torch.Tensor) -> torch.Tensor:
        p = torch.as_tensor(probabilities).detach().to("cpu", torch.float64)
        if p.shape != (self.num_examples,):
            raise ValueError(
                f"`probabilities` must have shape ({self.num_examples},), got {tuple(p.shape)}."
            )
        if not bool(torch.isfinite(p).all()) or bool((p < 0).any()) or not p.sum() > 0:
            raise ValueError("`probabilities` must be finite, non-negative and not all zero.")
        return p

    def draw_block(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one block: ``num_replicas * size`` indices; return this rank's slice and weights."""
        drawn = torch.multinomial(
            self.probabilities,
            self.num_replicas * size,
            replacement=True,
            generator=self._generator,
        )
        mine = drawn[self.rank * size : (self.rank + 1) * size]
        return mine, importance_weights(self.probabilities, mine)

    def finish_restored_epoch(self) -> None:
        """End the next iteration at once when the restored state had drawn its whole epoch.

        For a training loop that restarts the epoch a checkpoint finished (Lightning does so
        with ``max_steps`` set and a checkpoint written at an epoch's end).
        """
        if self._resume is not None and self._resume["blocks_drawn"] >= self.num_blocks:
            self._serve_nothing = True

    def __iter__(self) -> Iterator[tuple[int, float]]:
        if self._serve_nothing:
            self._serve_nothing, self._resume = False, None
            return
        resume, self._resume = self._resume, None
        if resume is not None and resume["epoch"] == self.epoch:
            self._generator.set_state(resume["generator"])
            start = resume["blocks_drawn"]
        else:
            self._generator.manual_seed(derive_seed(self.seed, "importance", self.epoch))
            start = 0
        self._draw_epoch, self._blocks_drawn = self.epoch, start
        for block in range(start, self.num_blocks):
            size = min(self.batch_size, self.num_samples - block * self.batch_size)
            indices, weights = self.draw_block(size)
            self._blocks_drawn = block + 1
            yield from zip(indices.tolist(), weights.tolist(), strict=True)

    def state_dict(self) -> dict[str, Any]:
        """Epoch, blocks drawn in it, generator state and probabilities (plain tensors/numbers)."""
        return {
            "epoch": self._draw_epoch,
            "blocks_drawn": self._blocks_drawn,
            "generator": self._generator.get_state(),
            "probabilities": self.probabilities.clone(),
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`: the next iteration of that epoch continues after it."""
        self.probabilities = self._checked(state_dict["probabilities"]).clone()  # exactly
        blocks = state_dict["blocks_drawn"]
        check_number("blocks_drawn", blocks, low=0, integer=True)
        # Nothing drawn yet in that epoch: a fresh iteration seeds itself.
        self._resume = dict(state_dict) if blocks > 0 else None


class DistributedAdaptiveImportanceSampler(AdaptiveImportanceSampler, DistributedSampler):
    """The distributed variant: every rank makes the same seeded draw and takes its share.

    Each block draws ``num_replicas * b`` indices (``b`` = this rank's batch size for the block)
    from the common probabilities with the common seed; rank ``r`` keeps positions
    ``[r b, (r + 1) b)``. The union over ranks is therefore exactly the draw of a single-process
    :class:`AdaptiveImportanceSampler` with ``batch_size * num_replicas``, and DDP's gradient
    average over ranks is the importance-weighted mean over the whole block. The probabilities
    must be identical on every rank (the callback all-gathers the scores for that).

    It subclasses ``torch.utils.data.DistributedSampler`` so that Lightning keeps it: with
    ``use_distributed_sampler=True`` (the default) Lightning replaces a loader's sampler only when
    it is *not* a ``DistributedSampler``. ``use_distributed_sampler=False`` works as well.

    Args:
        data_source: the dataset or the number of examples ``n`` (>= 1).
        batch_size: examples per block on each rank (>= 1).
        num_replicas: number of ranks; default: the initialised process group's world size.
        rank: this rank, in ``[0, num_replicas)``; default: the process group's rank.
        num_samples: draws per epoch on each rank (>= 1); default ``ceil(n / num_replicas)``.
        seed: base seed, the same on every rank (>= 0).

    Raises:
        ValueError: an argument is out of range, or no process group is initialised and
            ``num_replicas``/``rank`` are not given.
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        if num_replicas is None or rank is None:
            if not (dist.is_available() and dist.is_initialized()):
                raise ValueError(
                    "`num_replicas` and `rank` must be given when no process group is initialised."
                )
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        check_number("num_replicas", num_replicas, low=1, integer=True)
        check_number("rank", rank, low=0, high=num_replicas - 1, integer=True)
        n = _size(data_source)
        per_rank = math.ceil(n / num_replicas) if num_samples is None else num_samples
        AdaptiveImportanceSampler.__init__(self, n, batch_size, per_rank, seed)
        self.num_replicas, self.rank = num_replicas, rank
        # The attributes of DistributedSampler, for code that reads them.
        self.dataset = data_source  # type: ignore[assignment]
        self.shuffle, self.drop_last = True, False
        self.total_size = self.num_samples * num_replicas
