"""Shared helpers of the optimizers: RNG snapshots, probe hooks, argument checks, overflow-safe
inner products, module-attribute fingerprints. Pure torch."""

from __future__ import annotations

import contextlib
import inspect
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from lightning_dnn_tricks.validation import (
    TrickConfigurationError,
    check_bool,
    check_number,
)

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


def preserve_buffers(module: nn.Module) -> AbstractContextManager[None]:
    """Restore every buffer of ``module`` (BatchNorm running statistics...) on exit.

    Raises:
        TypeError: ``module`` is not an ``nn.Module`` (raised by the call, not on entry).

    Examples:
        >>> import torch
        >>> bn = torch.nn.BatchNorm1d(3)
        >>> with preserve_buffers(bn):
        ...     _ = bn(torch.randn(8, 3))
        >>> bool(bn.running_mean.abs().sum() == 0), int(bn.num_batches_tracked)
        (True, 0)
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"`module` must be an nn.Module, got {type(module).__name__}.")
    return _preserved_buffers(module)


@contextlib.contextmanager
def _preserved_buffers(module: nn.Module) -> Iterator[None]:
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


def checked_params(params: Any) -> list[Any]:
    """``params`` as a list for ``Optimizer.__init__``, or an error naming ``params``.

    Accepts what torch accepts: leaf tensors, ``(name, tensor)`` pairs, or param-group dicts
    whose ``"params"`` hold those (a generator there is turned into a list in place).
    """
    items = _listed(params, "an iterable of leaf tensors, (name, tensor) pairs or param groups")
    if not items:
        raise ValueError("`params` is empty: the optimizer has nothing to optimize.")
    for item in items:
        if not isinstance(item, dict):
            _check_tensor(item)
        elif "params" not in item:
            raise ValueError(f"`params`: a param-group dict needs 'params', got {item!r}.")
        elif isinstance(item["params"], torch.Tensor):
            _check_tensor(item["params"])
        else:
            item["params"] = _listed(item["params"], "a param group's 'params' as an iterable")
            for tensor in item["params"]:
                _check_tensor(tensor)
    return items


def _listed(params: Any, expected: str) -> list[Any]:
    if isinstance(params, torch.Tensor | str | bytes | Mapping | set):
        raise TypeError(
            f"`params` must be {expected} (a list: not a tensor, set...), got {params!r}."
        )
    try:
        return list(params)
    except TypeError:
        raise TypeError(f"`params` must be {expected}, got {params!r}.") from None


def _check_tensor(item: Any) -> None:
    named = isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
    tensor = item[1] if named else item
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"`params` must hold tensors (or param groups); one of them is {item!r}.")
    if not tensor.is_leaf:
        raise ValueError(
            "`params`: a non-leaf tensor (the result of an operation) cannot be optimized; pass "
            "the parameter itself."
        )


def check_like_defaults(name: str, kwargs: Mapping[Any, Any], target: Callable[..., Any]) -> None:
    """Refuse a value of ``kwargs`` whose default in ``target``'s signature is a number (or a
    tuple of numbers) unless it is one too: finite, not a bool (``weight_decay=True``, NaN...);
    a bool where the default is a bool. Any float must be finite and any int float-sized.
    Messages name ``name[key]``, or the key alone when ``name`` is empty."""
    try:
        defaults = {
            key: parameter.default
            for key, parameter in inspect.signature(target).parameters.items()
        }
    except (TypeError, ValueError):  # no signature: leave the checks to the target
        defaults = {}
    for key, value in kwargs.items():
        if not isinstance(key, str):
            raise TypeError(f"`{name}` keys must be argument names (strings), got {key!r}.")
        _check_like(f"{name}[{key!r}]" if name else key, value, defaults.get(key))


def _check_like(name: str, value: Any, default: Any) -> None:
    if type(default) is bool:
        check_bool(name, value)
    elif isinstance(value, float) or isinstance(default, int | float):
        if not isinstance(value, torch.Tensor):
            check_number(name, value)
    elif isinstance(default, tuple) and isinstance(value, tuple | list):
        for index, (item, like) in enumerate(zip(value, default, strict=False)):
            _check_like(f"{name}[{index}]", item, like)
    elif isinstance(value, int) and not isinstance(value, bool):
        check_number(name, value)


def refuse_sparse(optimizer: str, index: int, params: list[torch.Tensor]) -> None:
    """Raise :class:`TrickConfigurationError` when a gradient in ``params`` (group ``index``) is
    sparse, naming the tensor and the fix (``nn.Embedding(sparse=True)`` makes them)."""
    for position, p in enumerate(params):
        if p.grad is not None and p.grad.layout != torch.strided:
            raise TrickConfigurationError(
                f"{optimizer} does not support sparse gradients: parameter {position} of param "
                f"group {index} (shape {tuple(p.shape)}) has a {p.grad.layout} gradient, as "
                "nn.Embedding/nn.EmbeddingBag(sparse=True) make. Build that layer with "
                "sparse=False (or give it its own optimizer, e.g. torch.optim.SparseAdam)."
            )


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


def inner_products(d: list[torch.Tensor], g: list[torch.Tensor]) -> tuple[float, float]:
    """``(<d, g>, ||d||^2)`` summed over lists of tensors, with one host synchronisation.

    Real inner products: ``Re sum conj(d) g``, so a complex tensor counts as the vector of its
    real and imaginary parts. Each tensor's products are taken in float32 or wider and summed in
    float64; when one overflows (float32 gradients near 1e20 give products near 1e40), both are
    recomputed in float64, where no float32 value can overflow.

    Examples:
        >>> big = [torch.full((10,), 1e20)]
        >>> [f"{v:.3g}" for v in inner_products(big, big)]
        ['1e+41', '1e+41']
    """
    products = _products(d, g, wide=False)
    if not all(math.isfinite(value) for value in products):
        products = _products(d, g, wide=True)
    return products[0], products[1]


def _products(d: list[torch.Tensor], g: list[torch.Tensor], wide: bool) -> list[float]:
    dots, norms = [], []
    for x, y in zip(d, g, strict=True):
        if wide:
            dtype = torch.complex128 if x.is_complex() else torch.float64
            x, y = x.to(dtype), y.to(dtype)
        elif x.dtype in (torch.float16, torch.bfloat16):
            x, y = x.float(), y.float()
        x, y = x.reshape(-1), y.reshape(-1)
        dots.append(torch.vdot(x, y).real)
        norms.append(torch.vdot(x, x).real)
    totals = torch.stack([torch.stack(dots).double().sum(), torch.stack(norms).double().sum()])
    return [float(value) for value in totals.tolist()]


_NUMBER = (bool, int, float, complex)


class AttributeFingerprint:
    """The plain tensor, number and tuple-of-tensors attributes in the ``__dict__`` of modules
    (parameters, buffers and submodules live elsewhere): identity and, for tensors, the version
    counter that in-place writes bump. No tensor data is read, so there is no host sync. Tensors
    that require grad are left out: they are computed from parameters in each forward.
    """

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.keys: list[tuple[Any, ...]] = []
        self.kept: list[Any] = []  # the objects stay alive, so that no id is reused meanwhile
        for prefix, module in modules:
            for name, value in module.__dict__.items():
                if isinstance(value, torch.Tensor):
                    # A tensor in the autograd graph is recomputed from parameters in every
                    # forward (torch.nn.utils.prune's ``weight``, weight_norm), not carried state.
                    if not value.requires_grad:
                        self.keys.append((prefix, name, id(value), value._version))
                        self.kept.append(value)
                elif isinstance(value, _NUMBER):
                    self.keys.append((prefix, name, value))
                elif type(value) is tuple and value and isinstance(value[0], torch.Tensor):
                    versions = tuple(v._version for v in value if isinstance(v, torch.Tensor))
                    self.keys.append((prefix, name, id(value), *versions))
                    self.kept.append(value)

    def changed_since(self, before: AttributeFingerprint) -> list[str]:
        """Qualified names replaced, written in place, added or removed since ``before``."""
        if self.keys == before.keys:
            return []
        old = {key[:2]: key for key in before.keys}
        new = {key[:2]: key for key in self.keys}
        return sorted(
            f"{prefix}.{name}" if prefix else name
            for prefix, name in old.keys() | new.keys()
            if old.get((prefix, name)) != new.get((prefix, name))
        )
