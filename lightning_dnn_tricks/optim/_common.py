"""Shared helpers of the optimizers: RNG snapshots, probe hooks, argument checks. Pure torch."""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_dnn_tricks.validation import check_number

#: A zero-argument callable returning a context manager entered around a probe evaluation.
ProbeContext = Callable[[], AbstractContextManager[Any]]


class RNGState:
    """The CPU generator state and the state of every CUDA device that holds a parameter."""

    def __init__(self, devices: Iterable[torch.device]) -> None:
        self.cpu = torch.get_rng_state()
        self.cuda = {
            index: torch.cuda.get_rng_state(index)
            for index in sorted({d.index or 0 for d in devices if d.type == "cuda"})
        }

    def restore(self) -> None:
        """Put every generator back where it was when this snapshot was taken."""
        torch.set_rng_state(self.cpu)
        for index, state in self.cuda.items():
            torch.cuda.set_rng_state(state, index)


def param_devices(params: Iterable[torch.Tensor]) -> set[torch.device]:
    return {p.device for p in params}


class ProbeHooks:
    """Context managers entered around every extra (probe) evaluation of a closure optimizer.

    The Lightning path registers one that keeps BatchNorm running statistics from moving twice
    and logs nothing during the probe; in a plain loop use :func:`preserve_buffers`.
    """

    def __init__(self) -> None:
        self._hooks: OrderedDict[int, ProbeContext] = OrderedDict()  # weak-referenceable

    def register(self, context: ProbeContext) -> RemovableHandle:
        if not callable(context):
            raise ValueError(
                f"`context` must be a callable returning a context manager, got {context!r}."
            )
        handle = RemovableHandle(self._hooks)
        self._hooks[handle.id] = context
        return handle

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        with contextlib.ExitStack() as stack:
            for context in list(self._hooks.values()):
                stack.enter_context(context())
            yield


@contextlib.contextmanager
def preserve_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``module`` (BatchNorm running statistics...) on exit.

    Examples:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with preserve_buffers(bn):
        ...     _ = bn(torch.randn(8, 3))
        >>> bool(bn.running_mean.abs().sum() == 0), int(bn.num_batches_tracked)
        (True, 0)
    """
    buffers = [b for b in module.buffers() if b is not None]
    saved = [b.detach().clone() for b in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in zip(buffers, saved, strict=True):
                buffer.copy_(value)


def check_positive(name: str, value: Any) -> None:
    check_number(name, value, low=0.0, low_inclusive=False)


def check_closure(optimizer: str, closure: Callable[[], Any] | None) -> Callable[[], Any]:
    """Raise ``ValueError`` when a closure optimizer is stepped without a closure."""
    if closure is None:
        raise ValueError(
            f"{optimizer}.step needs a `closure` that re-evaluates the loss and its gradients "
            "(zero the gradients, forward, backward, return the loss): it evaluates the gradient "
            "twice per step. Lightning drops the closure under precision='16-mixed'; use "
            "'bf16-mixed' or '32-true' there."
        )
    return closure
