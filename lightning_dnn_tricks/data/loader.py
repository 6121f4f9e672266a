"""A DataLoader that resumes mid-epoch from a Lightning checkpoint."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from torch.utils.data import DataLoader

from lightning_dnn_tricks.validation import check_number


class ResumableDataLoader(DataLoader):
    """``DataLoader`` whose position inside the current epoch is saved in Lightning checkpoints.

    Lightning stores ``state_dict()`` of a training loader that has one, and calls
    ``load_state_dict()`` before iterating again after ``Trainer.fit(ckpt_path=...)``. The next
    iteration then skips the batches the interrupted run had already consumed in that epoch, so —
    with a sampler whose order depends only on the epoch, such as
    :class:`~lightning_dnn_tricks.data.EpochSeededRandomSampler` — a resumed run sees exactly the
    batches of an uninterrupted one.

    Examples:
        >>> import torch
        >>> loader = ResumableDataLoader(torch.arange(10), batch_size=2)
        >>> loader.load_state_dict({"batches_served": 3})
        >>> [batch.tolist() for batch in loader]
        [[6, 7], [8, 9]]

    Note:
        Skipped batches are still loaded (then dropped): cheap for in-memory datasets.
    """

    _batches_served: int = 0
    _batches_to_skip: int = 0

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self._batches_to_skip = self._batches_to_skip, 0
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        self._batches_served = skip
        for batch in iterator:
            self._batches_served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        """``{"batches_served": n}``: batches yielded so far in the current epoch."""
        return {"batches_served": self._batches_served}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Skip ``state_dict["batches_served"]`` batches at the start of the next iteration."""
        served = state_dict["batches_served"]
        check_number("batches_served", served, low=0, integer=True)
        self._batches_to_skip = served
