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

    A checkpoint written on the last batch of an epoch (``every_n_train_steps`` landing there)
    holds a complete epoch: the resumed run starts the next epoch from its first batch. The state
    also holds the sampler's epoch, and after a restore the loader numbers the epochs itself
    (``epoch + 1`` per iteration), because Lightning's own count can be one ahead after such a
    resume (iteration-based training, ``max_steps`` set).

    Lightning 2.6 has one more quirk there: with ``max_steps`` set, a checkpoint written at an
    epoch's end (``ModelCheckpoint(save_on_train_epoch_end=True)``) restarts that finished epoch
    and asks for one batch more. The trick callbacks call :meth:`finish_restored_epoch` at
    ``on_train_start`` in that case, so the restarted epoch ends at once, without a replayed
    batch; without a trick in the Trainer, call it yourself from a callback's ``on_train_start``
    when ``trainer.fit_loop.restarted_on_epoch_end`` is true.

    Examples:
        >>> import torch
        >>> loader = ResumableDataLoader(torch.arange(10), batch_size=2)
        >>> loader.load_state_dict({"batches_served": 3})
        >>> [batch.tolist() for batch in loader]
        [[6, 7], [8, 9]]
        >>> loader.load_state_dict({"batches_served": 5})   # a complete epoch: start the next
        >>> len([batch for batch in loader])
        5

    Note:
        Skipped batches are still loaded (then dropped): cheap for in-memory datasets.
    """

    _batches_served: int = 0
    _batches_to_skip: int = 0
    _epoch: int | None = None  # after a restore: the epoch this loader serves next
    _restored_complete: bool = False  # the restored state was a whole epoch
    _serve_nothing: bool = False  # the next iteration ends at once (finish_restored_epoch)

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        skip, self._batches_to_skip = self._batches_to_skip, 0
        self._restored_complete = False
        if self._serve_nothing:
            self._serve_nothing = False
            return
        if self._epoch is not None:
            self._set_sampler_epoch(self._epoch)
            self._epoch += 1
        iterator = super().__iter__()
        for _ in range(skip):
            next(iterator)
        self._batches_served = skip
        for batch in iterator:
            self._batches_served += 1
            yield batch

    def _samplers(self) -> list[Any]:
        found = [self.sampler, getattr(self.batch_sampler, "sampler", None)]
        return [s for s in found if callable(getattr(s, "set_epoch", None))]

    def _sampler_epoch(self) -> int | None:
        epochs = [getattr(s, "epoch", None) for s in self._samplers()]
        return next((e for e in epochs if isinstance(e, int)), None)

    def _set_sampler_epoch(self, epoch: int) -> None:
        for sampler in self._samplers():
            sampler.set_epoch(epoch)

    def state_dict(self) -> dict[str, int]:
        """``{"batches_served": n, "epoch": e}``: batches yielded so far in the current epoch,
        and the sampler's epoch (when it has one)."""
        state = {"batches_served": self._batches_served}
        epoch = self._sampler_epoch()
        if epoch is not None:
            state["epoch"] = epoch
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Skip ``state_dict["batches_served"]`` batches at the start of the next iteration, or
        none when they were the whole epoch (then the next iteration is the next epoch)."""
        served = state_dict["batches_served"]
        check_number("batches_served", served, low=0, integer=True)
        epoch = state_dict.get("epoch")
        if epoch is not None:
            check_number("epoch", epoch, low=0, integer=True)
        complete = served >= len(self) > 0
        self._batches_to_skip = 0 if complete else served
        self._epoch = None if epoch is None else epoch + int(complete)
        self._restored_complete = complete

    def finish_restored_epoch(self) -> None:
        """End the next iteration at once when the restored state was a complete epoch.

        For a loop that restarts the epoch the checkpoint finished (see the class notes); the
        iteration after it starts the next epoch.
        """
        if self._restored_complete:
            self._serve_nothing = True
            self._batches_served = len(self)
