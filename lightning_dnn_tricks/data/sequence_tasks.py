"""Synthetic long-memory sequence tasks: the adding problem and the copy-memory task."""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_dnn_tricks.data.base import DatasetSplits, InMemoryDataModule
from lightning_dnn_tricks.validation import check_number

#: The largest count (examples, steps, symbols) the generators accept.
MAX_EXAMPLES = 10**8


def make_adding_problem(
    num_examples: int, seq_len: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_examples`` adding-problem sequences.

    Returns ``x`` float32 ``(num_examples, seq_len, 2)``: channel 0 holds uniform [0, 1) values,
    channel 1 a marker that is 1 at one position of ``[0, seq_len // 2)`` and one position of
    ``[seq_len // 2, seq_len)``, 0 elsewhere; and ``y`` float32 ``(num_examples, 1)``, the sum of
    the two marked values.
    """
    check_number("num_examples", num_examples, low=0, high=MAX_EXAMPLES, integer=True)
    check_number("seq_len", seq_len, low=2, high=MAX_EXAMPLES, integer=True)
    values = torch.rand(num_examples, seq_len, generator=generator)
    half = seq_len // 2
    first = torch.randint(0, half, (num_examples, 1), generator=generator)
    second = torch.randint(half, seq_len, (num_examples, 1), generator=generator)
    positions = torch.cat([first, second], dim=1)
    markers = torch.zeros_like(values).scatter_(1, positions, 1.0)
    target = values.gather(1, positions).sum(dim=1, keepdim=True)
    return torch.stack([values, markers], dim=-1), target


def make_copy_memory(
    num_examples: int,
    delay: int,
    copy_length: int,
    num_symbols: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``num_examples`` copy-memory sequences of length ``delay + 2 * copy_length``.

    Tokens: ``copy_length`` symbols from ``1..num_symbols``, then ``delay`` blanks (``0``) of which
    the last is the delimiter ``num_symbols + 1``, then ``copy_length`` blanks. Returns ``x`` the
    one-hot tokens, float32 ``(num_examples, T, num_symbols + 2)``, and ``y`` int64
    ``(num_examples, T)``: 0 everywhere except the last ``copy_length`` positions, which hold the
    symbols to recall.
    """
    check_number("num_examples", num_examples, low=0, high=MAX_EXAMPLES, integer=True)
    check_number("delay", delay, low=1, high=MAX_EXAMPLES, integer=True)
    check_number("copy_length", copy_length, low=1, high=MAX_EXAMPLES, integer=True)
    check_number("num_symbols", num_symbols, low=1, high=MAX_EXAMPLES, integer=True)
    seq_len = delay + 2 * copy_length
    shape = (num_examples, copy_length)
    symbols = torch.randint(1, num_symbols + 1, shape, generator=generator)
    tokens = torch.zeros(num_examples, seq_len, dtype=torch.int64)
    tokens[:, :copy_length] = symbols
    tokens[:, copy_length + delay - 1] = num_symbols + 1
    targets = torch.zeros_like(tokens)
    targets[:, seq_len - copy_length :] = symbols
    return F.one_hot(tokens, num_symbols + 2).float(), targets


class _SyntheticSequenceDataModule(InMemoryDataModule):
    """Three independently generated splits; each split's draw depends on ``(seed, split)`` only."""

    input_size: int
    seq_len: int

    def __init__(
        self,
        *,
        num_train: int,
        num_val: int,
        num_test: int,
        batch_size: int,
        seed: int,
        num_workers: int,
        drop_last: bool,
    ) -> None:
        check_number("num_train", num_train, low=1, integer=True)
        check_number("num_val", num_val, low=1, integer=True)
        check_number("num_test", num_test, low=1, integer=True)
        super().__init__(
            batch_size=batch_size, seed=seed, num_workers=num_workers, drop_last=drop_last
        )
        self.num_train = num_train
        self.num_val = num_val
        self.num_test = num_test

    @abstractmethod
    def generate(
        self, num_examples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw ``num_examples`` ``(x, y)`` pairs with ``generator``."""

    def build_datasets(self) -> DatasetSplits:
        """Generate the train, validation and test splits, each from its own generator."""
        sizes = {"train": self.num_train, "val": self.num_val, "test": self.num_test}
        return DatasetSplits(
            *(
                TensorDataset(*self.generate(size, self.generator("data", split)))
                for split, size in sizes.items()
            )
        )


class AddingProblemDataModule(_SyntheticSequenceDataModule):
    """The adding problem (Hochreiter & Schmidhuber, 1997): sum the two marked values of a sequence.

    Each input is a ``(seq_len, 2)`` float32 sequence: channel 0 holds uniform [0, 1) values,
    channel 1 is 1 at exactly two positions (one in each half of the sequence) and 0 elsewhere.
    The target is the float32 sum of the two marked values, shaped ``(1,)`` (a regression).

    Args:
        seq_len: sequence length ``T`` (>= 2); longer sequences need longer memory.
        num_train: training examples (>= 1).
        num_val: validation examples (>= 1).
        num_test: test examples (>= 1).
        batch_size: examples per batch (>= 1).
        seed: seed of the generation and the shuffling (in [0, 2**32 - 1]).
        num_workers: worker processes per loader (>= 0).
        drop_last: drop the last incomplete training batch.

    Attributes:
        num_classes: ``None`` (regression).
        input_size: 2 (features per time step).
        seq_len: ``T``.
        input_shape: ``(T, 2)``.
        output_size: 1.

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``drop_last`` is not a ``bool``.

    Examples:
        >>> dm = AddingProblemDataModule(seq_len=50, num_train=128, num_val=32, num_test=32)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape)
        ((64, 50, 2), (64, 1))

    Note:
        The marker placement (one per half) follows the common modern formulation (Le, Jaitly &
        Hinton, 2015; Arjovsky, Shah & Bengio, 2016). Always predicting 1 gives a mean squared
        error of 1/6 ~ 0.167, the baseline a model must beat. Each split is drawn from its own
        generator, so changing ``num_train`` leaves the validation and test data unchanged.
    """

    input_size = 2
    output_size = 1

    def __init__(
        self,
        seq_len: int = 100,
        num_train: int = 10000,
        num_val: int = 1000,
        num_test: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        check_number("seq_len", seq_len, low=2, integer=True)
        super().__init__(
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            drop_last=drop_last,
        )
        self.seq_len = seq_len
        self.input_shape = (seq_len, self.input_size)

    def generate(
        self, num_examples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw adding-problem examples (see :func:`make_adding_problem`)."""
        return make_adding_problem(num_examples, self.seq_len, generator)


class CopyMemoryDataModule(_SyntheticSequenceDataModule):
    """The copy-memory task (Hochreiter & Schmidhuber, 1997): recall symbols after a long delay.

    Each sequence has ``T = delay + 2 * copy_length`` tokens: ``copy_length`` symbols drawn
    uniformly from ``1..num_symbols``, then ``delay`` blanks (``0``) whose last one is replaced by
    the delimiter ``num_symbols + 1``, then ``copy_length`` blanks. The input is the one-hot
    encoding, float32 ``(T, num_symbols + 2)``; the target is int64 ``(T,)``: blank (``0``)
    everywhere except the last ``copy_length`` positions, which hold the symbols in order.

    Args:
        delay: blanks between the symbols and the recall, delimiter included (>= 1).
        copy_length: number of symbols to remember (>= 1).
        num_symbols: size of the symbol alphabet (>= 1).
        num_train: training examples (>= 1).
        num_val: validation examples (>= 1).
        num_test: test examples (>= 1).
        batch_size: examples per batch (>= 1).
        seed: seed of the generation and the shuffling (in [0, 2**32 - 1]).
        num_workers: worker processes per loader (>= 0).
        drop_last: drop the last incomplete training batch.

    Attributes:
        num_classes: ``num_symbols + 1`` (blank and the symbols: the output classes per step).
        input_size: ``num_symbols + 2`` (blank, symbols and delimiter: the one-hot width).
        seq_len: ``T = delay + 2 * copy_length``.
        input_shape: ``(T, num_symbols + 2)``.

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``drop_last`` is not a ``bool``.

    Examples:
        >>> dm = CopyMemoryDataModule(delay=20, num_train=128, num_val=32, num_test=32)
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), tuple(y.shape), dm.num_classes
        ((64, 40, 10), (64, 40), 9)

    Note:
        This is the formulation of Arjovsky, Shah & Bengio (2016), with their ``T`` equal to our
        ``delay``. A memoryless model that predicts blanks and then uniform symbols reaches a
        per-step cross-entropy of ``copy_length * log(num_symbols) / T``, the baseline to beat.
        Inputs take ``T * (num_symbols + 2) * 4`` bytes per example.
    """

    def __init__(
        self,
        delay: int = 50,
        copy_length: int = 10,
        num_symbols: int = 8,
        num_train: int = 10000,
        num_val: int = 1000,
        num_test: int = 1000,
        batch_size: int = 64,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        check_number("delay", delay, low=1, integer=True)
        check_number("copy_length", copy_length, low=1, integer=True)
        check_number("num_symbols", num_symbols, low=1, integer=True)
        super().__init__(
            num_train=num_train,
            num_val=num_val,
            num_test=num_test,
            batch_size=batch_size,
            seed=seed,
            num_workers=num_workers,
            drop_last=drop_last,
        )
        self.delay = delay
        self.copy_length = copy_length
        self.num_symbols = num_symbols
        self.num_classes = num_symbols + 1
        self.input_size = num_symbols + 2
        self.seq_len = delay + 2 * copy_length
        self.input_shape = (self.seq_len, self.input_size)

    def generate(
        self, num_examples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw copy-memory examples (see :func:`make_copy_memory`)."""
        return make_copy_memory(
            num_examples, self.delay, self.copy_length, self.num_symbols, generator
        )
