"""The progress bar that ``ldt`` gives a Trainer whose standard output is not a terminal."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm


class LogProgressBar(TQDMProgressBar):
    """Lightning's ``TQDMProgressBar`` made for a log file: one line per epoch.

    ``leave=True`` ends each epoch's bar with a newline, and the line ends with the epoch's
    metrics (validation included). During ``fit`` the nested validation bar is a disabled one,
    through the hook Lightning documents for this (``init_validation_tqdm``): in a file, each of
    its updates would be a line of its own. ``ldt validate`` keeps its bar.

    Args:
        refresh_rate: update the bar every this many batches (Lightning's ``TQDM_MINITERS``
            environment variable raises it).
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate, leave=True)

    def init_validation_tqdm(self) -> Tqdm:
        if self.trainer.state.fn == "validate":
            return super().init_validation_tqdm()
        return Tqdm(disable=True)  # created disabled: an enabled bar prints when it is created


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def progress_bar_for_logs(
    enable_progress_bar: bool | None, callbacks: Sequence[Any]
) -> LogProgressBar | None:
    """A :class:`LogProgressBar` when standard output is not a terminal, the progress bar is
    enabled (``None`` or ``True``) and ``callbacks`` hold no progress bar; else ``None``.

    Lightning's default there is its Rich bar when ``rich`` is installed, which prints nothing
    in a log until the run ends, or a tqdm bar that rewrites one line for the whole run.
    """
    if enable_progress_bar is False or _isatty(sys.stdout):
        return None
    if any(isinstance(callback, ProgressBar) for callback in callbacks):
        return None
    return LogProgressBar()
