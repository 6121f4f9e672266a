"""SGD-G2 (Ayadi & Turinici, ICPR 2020): SGD whose step size adapts from a second gradient."""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Literal

import torch
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle

from lightning_dnn_tricks.optim._common import (
    ProbeHooks,
    RNGState,
    check_closure,
    check_positive,
    checked_params,
    inner_products,
    param_devices,
    refuse_sparse,
)
from lightning_dnn_tricks.optim._lightning_support import check_lightning_support
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick
from lightning_dnn_tricks.validation import TrickWarning, check_choice, check_number

Mode = Literal["g2", "srk2"]
MODES: tuple[Mode, ...] = ("g2", "srk2")

_PAPER = (
    "Ayadi & Turinici, Stochastic Runge-Kutta methods and adaptive SGD-G2, ICPR 2020 "
    "(arXiv 2002.09304)"
)
#: Two gradient evaluations on the same minibatch: a closure, no fp16 GradScaler, no accumulation.
CLOSURE_CAPABILITIES = Capabilities(
    needs_closure=True,
    gradient_evaluations_per_step=2,
    precisions=("32-true", "bf16-mixed"),
    gradient_accumulation=False,
)
SGDG2_SPEC = register_trick(
    TrickSpec(
        name="sgdg2",
        kind="optimizer",
        import_path="lightning_dnn_tricks.optim.sgdg2:SGDG2",
        summary="SGD that adapts its step size from a second gradient at a probe point.",
        paper=_PAPER,
        capabilities=dataclasses.replace(
            CLOSURE_CAPABILITIES, effects=frozenset({"adapts_learning_rate"})
        ),
        reconstruction=True,
        docs_page="methods/sgdg2.md",
    )
)
#: What goes wrong under Lightning without OptimizerSupport (the first step says so).
_WITHOUT_SUPPORT = (
    "its second (probe) gradient evaluation would update BatchNorm running statistics and "
    "torchmetrics states a second time and log a second loss every step, and the Trainer "
    "settings that break the two evaluations (precision='16-mixed', accumulate_grad_batches > 1) "
    "would go unchecked"
)
#: SRK2 (not registered separately): the same needs, a fixed lr that schedules may set.
SRK2_SPEC = dataclasses.replace(
    SGDG2_SPEC,
    import_path="lightning_dnn_tricks.optim.sgdg2:SRK2",
    capabilities=CLOSURE_CAPABILITIES,
)


def _step_from(
    params: list[torch.Tensor], origin: list[torch.Tensor], grads: list[torch.Tensor], alpha: float
) -> None:
    """``params <- origin + alpha * grads`` in one pass per tensor (``torch.add(out=)``)."""
    for p, x, g in zip(params, origin, grads, strict=True):
        torch.add(x, g, alpha=alpha, out=p)


def adapted_step(
    h: float, dot: float, d_norm_sq: float, beta: float, tiny: float
) -> tuple[float, float]:
    """The SGD-G2 step-size update: ``(h_new, h_opt)`` before clamping (see its method card).

    ``h_opt = 2 h <D, g> / ||D||^2`` when ``<D, g> > 0`` and ``||D|| > tiny`` (else ``h``);
    ``h_new = beta h + (1 - beta) h_opt`` when ``h_opt >= h`` (slow increase), otherwise
    ``(1 - beta) h_opt`` (fast decrease).

    Examples:
        >>> adapted_step(1.0, dot=1.0, d_norm_sq=1.0, beta=0.9, tiny=1e-12)  # h_opt = 2
        (1.1, 2.0)
    """
    h_opt = 2.0 * h * dot / d_norm_sq if dot > 0.0 and d_norm_sq > tiny * tiny else h
    h_new = beta * h + (1.0 - beta) * h_opt if h_opt >= h else (1.0 - beta) * h_opt
    return h_new, h_opt


class SGDG2(Optimizer):
    r"""SGD-G2 (Ayadi & Turinici, ICPR 2020): adaptive SGD from a stochastic Runge-Kutta scheme.

    Each step evaluates the gradient twice on the same minibatch (``step`` calls the closure twice)
    and, per param group, with inner products over all of the group's parameters:

    .. code-block:: text

        g     = grad f(X)                      (closure call 1)
        Y     = X - h g                        (probe)
        g~    = grad f(Y)                      (closure call 2: same minibatch, same RNG state)
        D     = g - g~
        h_opt = 2 h <D, g> / ||D||^2           if <D, g> > 0 and ||D|| > tiny, else h
        h_new = beta h + (1 - beta) h_opt      if h_opt >= h   (slow increase)
                (1 - beta) h_opt               otherwise       (fast decrease)
        h_new = clamp(h_new, h_min, h_max)
        X    <- X - h_new g                    (from X, not from Y)

    On a quadratic with curvature ``lam`` along the gradient, ``h_opt = 2 / lam`` and ``h``
    approaches it from below. ``h`` is the param group's ``lr``: loggers and checkpoints see the
    adapted value, and an LR scheduler that writes ``lr`` replaces ``h`` (see Warns). With
    ``mode="srk2"`` the step is the non-adaptive second-order Runge-Kutta (Heun) step
    ``X <- X - h/2 (g + g~)`` with a fixed or scheduled ``lr`` (see :class:`SRK2`).

    The global RNG (CPU and the CUDA devices of the parameters) is reset before the probe
    evaluation to its state before the first one, so dropout draws the same masks, and is left
    where the first evaluation left it. Parameters without a gradient after the first evaluation
    are skipped. Context managers registered with :meth:`register_probe_hook` are entered around
    the probe evaluation (:func:`~lightning_dnn_tricks.optim.preserve_buffers` keeps BatchNorm
    running statistics from moving twice; the Lightning path registers it for you), those
    registered with :meth:`register_first_evaluation_hook` around the first one.

    Inner products are real (``Re <D, g>``), so complex parameters are supported: a run equals
    the one on ``torch.view_as_real`` of the parameters. They cannot overflow (float64 when
    float32 would), and a step size that would still be NaN or infinite (infinite gradients)
    keeps the previous one.

    Args:
        params: parameters, ``(name, parameter)`` pairs or param groups (each group may set any
            of the options below). Dense gradients only; complex parameters are supported.
        lr: initial step size ``h_0`` (> 0).
        beta: smoothing of the step-size update, in [0, 1).
        h_min: smallest step size (> 0).
        h_max: largest step size (> 0); ``None`` means ``10 * lr`` of the group.
        weight_decay: L2 penalty added to both gradients (``g += weight_decay * X``), >= 0.
        mode: ``"g2"`` (adaptive SGD-G2) or ``"srk2"`` (Heun step with the fixed ``lr``).
        tiny: threshold on ``||D||`` below which ``h`` is kept (> 0).

    Raises:
        ValueError: an argument is out of range or NaN/inf, a number is a bool, an option is
            unknown (the message names the argument), or ``step`` is called without a closure.
        TypeError: ``params`` is not an iterable of leaf tensors or param groups.
        TrickConfigurationError: (a ``ValueError``) at ``step``, after the first evaluation and
            before any parameter moves, when a gradient is sparse
            (``nn.Embedding(sparse=True)``: build it with ``sparse=False``); on the first step
            a Lightning Trainer takes without ``callbacks.OptimizerSupport`` (the message names
            the fix, ``Trainer(callbacks=[OptimizerSupport()])``).

    Warns:
        TrickWarning: once, when a ``"g2"`` group's ``lr`` after the first evaluation differs
            from ``adapted_lr``, the value the last step wrote: a scheduler or a callback writes
            it, and the adaptation restarts from the written value every time. The warning
            names :attr:`lr_scheduler_name` (``OptimizerSupport`` sets it to the Trainer's).

    Examples:
        >>> import torch
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = SGDG2(model.parameters(), lr=0.1)
        >>> x, y = torch.randn(16, 3), torch.randn(16, 1)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> opt.param_groups[0]["lr"] != 0.1
        True

    Note:
        Our reconstruction: the rule comes from the abstract and a second-hand transcription of
        the paper (the paper's body was not available); the public ``SGD_G2`` class, which never
        re-evaluates the gradient, is not followed. The clamp ``[h_min, h_max]`` and the L2
        ``weight_decay`` are our additions. Each step costs two forward/backward passes and one
        device-to-host synchronisation per group (the new ``h`` is a Python float). The copy of
        ``X`` taken for the probe lives in a buffer kept between steps (one extra copy of the
        parameters in memory, not part of ``state_dict``), because allocating it anew every step
        costs more than the copy itself. Inner products that overflow in float32 are redone in
        float64 (only then). An lr written from outside is used as given (warned, not refused):
        a multiplicative schedule (``StepLR``, ``ExponentialLR``) composes as a scale on ``h``.
    """

    spec: ClassVar[TrickSpec] = SGDG2_SPEC
    #: Who else writes ``lr`` (a scheduler's class name), named in the warning; ``None``: unknown.
    lr_scheduler_name: str | None = None
    _warned_lr = False  # set on the instance by the warning

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        beta: float = 0.9,
        h_min: float = 1e-6,
        h_max: float | None = None,
        weight_decay: float = 0.0,
        mode: Mode = "g2",
        tiny: float = 1e-12,
    ) -> None:
        defaults = {
            "lr": lr,
            "beta": beta,
            "h_min": h_min,
            "h_max": h_max,
            "weight_decay": weight_decay,
            "mode": mode,
            "tiny": tiny,
        }
        self._check_group(dict(defaults))
        self._probe_hooks = ProbeHooks()
        self._first_hooks = ProbeHooks()
        self._origin: dict[int, torch.Tensor] = {}
        super().__init__(checked_params(params), defaults)

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        check_positive("lr", group["lr"])
        check_number("beta", group["beta"], low=0.0, high=1.0, high_inclusive=False)
        check_positive("h_min", group["h_min"])
        if group["h_max"] is not None:
            check_positive("h_max", group["h_max"])
        check_number("weight_decay", group["weight_decay"], low=0.0)
        check_choice("mode", group["mode"], MODES)
        check_positive("tiny", group["tiny"])
        h_max = 10.0 * group["lr"] if group["h_max"] is None else group["h_max"]
        if not group["h_min"] <= group["lr"] <= h_max:
            raise ValueError(
                f"`lr` must be in [h_min, h_max] = [{group['h_min']}, {h_max}], got {group['lr']}."
            )

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group({**self.defaults, **param_group})  # before the group is added
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        if group["h_max"] is None:
            group["h_max"] = 10.0 * group["lr"]
        group.setdefault("last_h_opt", group["lr"])
        group.setdefault("adapted_lr", group["lr"])

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for name in ("_probe_hooks", "_first_hooks"):  # copies and unpickled optimizers
            if not hasattr(self, name):
                setattr(self, name, ProbeHooks())
        if not hasattr(self, "_origin"):
            self._origin = {}

    def register_probe_hook(
        self, context: Callable[[], AbstractContextManager[Any]]
    ) -> RemovableHandle:
        """Enter ``context()`` around every probe evaluation; returns a removable handle."""
        return self._probe_hooks.register(context)

    def register_first_evaluation_hook(
        self, context: Callable[[], AbstractContextManager[Any]]
    ) -> RemovableHandle:
        """Enter ``context()`` around every first evaluation (at ``X``); a removable handle."""
        return self._first_hooks.register(context)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Evaluate the closure at ``X`` and at the probe ``Y``, update ``X`` and ``h``; returns
        the loss of the first evaluation (at ``X``)."""
        check_lightning_support(self, _WITHOUT_SUPPORT)
        closure = check_closure(type(self).__name__, closure)
        devices = param_devices(p for group in self.param_groups for p in group["params"])
        before = RNGState(devices)
        with self._first_hooks.entered(), torch.enable_grad():
            loss = closure()
        after = RNGState(devices)

        found = []
        for index, group in enumerate(self.param_groups):  # refuse before anything moves
            params = [p for p in group["params"] if p.grad is not None]
            refuse_sparse(type(self).__name__, index, params)
            self._check_lr_writer(index, group)
            found.append((group, params))
        work = []  # (group, params, gradients at X, copies of X)
        for group, params in found:
            if not params:
                continue
            grads: list[torch.Tensor] = [p.grad for p in params]
            if group["weight_decay"]:
                grads = list(torch._foreach_add(grads, params, alpha=group["weight_decay"]))
            origin = self._copies_of(params)
            torch._foreach_add_(params, grads, alpha=-group["lr"])  # the probe Y
            work.append((group, params, grads, origin))
        if not work:
            return loss
        first_grads = [[p.grad for p in params] for _, params, _, _ in work]
        for _, params, _, _ in work:
            for p in params:
                p.grad = None  # the probe's backward writes fresh gradients

        before.restore()
        try:
            with self._probe_hooks.entered(), torch.enable_grad():
                closure()
        finally:
            after.restore()

        for (group, params, grads, origin), saved in zip(work, first_grads, strict=True):
            probe: list[torch.Tensor] = [
                torch.zeros_like(p) if p.grad is None else p.grad for p in params
            ]
            if group["weight_decay"]:
                probe = list(torch._foreach_add(probe, params, alpha=group["weight_decay"]))
            self._update(group, params, origin, grads, probe)
            for p, grad in zip(params, saved, strict=True):
                p.grad = grad
        return loss

    def _check_lr_writer(self, index: int, group: dict[str, Any]) -> None:
        """Warn once when ``lr`` differs from what the last step wrote (a scheduler's work)."""
        written = group.get("adapted_lr")
        if group["mode"] != "g2" or written is None or group["lr"] == written or self._warned_lr:
            return
        self._warned_lr = True
        by = self.lr_scheduler_name or "something outside the optimizer (an LR scheduler?)"
        warnings.warn(
            f"{type(self).__name__}: the lr of param group {index} was changed outside the "
            f"optimizer (its last step left {written!r}, the next one found {group['lr']!r}), "
            f"by {by}. That overrides the step size SGD-G2 adapts: the adaptation restarts from "
            "the written value every time. Remove the scheduler (SGD-G2 sets the lr itself; "
            "bound it with h_min/h_max), or use SRK2 or SGD for a scheduled lr. Warned once.",
            TrickWarning,
            stacklevel=3,
        )

    def _copies_of(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of ``params`` (``X``) in buffers reused from step to step (not state).

        Allocating fresh parameter-sized tensors every step costs several times the copy itself
        on CPU, so the buffers persist; they are scratch space, rewritten by every step.
        """
        copies = []
        for p in params:
            buffer = self._origin.get(id(p))
            if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (
                p.shape,
                p.dtype,
                p.device,
            ):
                buffer = self._origin[id(p)] = torch.empty_like(p)
            copies.append(buffer)
        torch._foreach_copy_(copies, params)
        return copies

    @staticmethod
    def _update(
        group: dict[str, Any],
        params: list[torch.Tensor],
        origin: list[torch.Tensor],
        grads: list[torch.Tensor],
        probe: list[torch.Tensor],
    ) -> None:
        """Set ``params`` (now at ``Y``) to the step from ``origin`` (``X``); ``probe`` (``g~``)
        is overwritten. ``X - h g`` is written straight into the parameters (``out=``): one pass
        where restoring ``X`` and then stepping take two, with the same rounding.
        """
        h = float(group["lr"])
        if group["mode"] == "srk2":
            _step_from(params, origin, grads, -h / 2)
            torch._foreach_add_(params, probe, alpha=-h / 2)
            return
        torch._foreach_sub_(probe, grads)  # g~ - g = -D, in place: no parameter-sized allocation
        minus_dot, d_norm_sq = inner_products(probe, grads)
        h_new, h_opt = adapted_step(h, -minus_dot, d_norm_sq, group["beta"], group["tiny"])
        if not (math.isfinite(h_new) and math.isfinite(h_opt)):  # inf/inf: infinite gradients
            h_new = h_opt = h
        h_new = min(max(h_new, group["h_min"]), group["h_max"])
        _step_from(params, origin, grads, -h_new)
        group["lr"] = group["adapted_lr"] = h_new
        group["last_h_opt"] = h_opt


class SRK2(SGDG2):
    r"""Second-order stochastic Runge-Kutta (Heun) step: ``X <- X - h/2 (g(X) + g(X - h g))``.

    The non-adaptive scheme SGD-G2 derives from (Ayadi & Turinici, ICPR 2020): two gradient
    evaluations on the same minibatch per step, with the fixed step size ``lr``. Same closure,
    RNG and probe-hook behaviour as :class:`SGDG2` (it is ``SGDG2(mode="srk2")``).

    Args:
        params: parameters or param groups.
        lr: step size ``h`` (> 0); an LR scheduler may set it (SRK2 does not adapt it).
        weight_decay: L2 penalty added to both gradients, >= 0.

    Raises:
        ValueError: an argument is out of range (the message names it).

    Examples:
        >>> import torch
        >>> p = torch.nn.Parameter(torch.tensor([1.0]))
        >>> opt = SRK2([p], lr=0.5)
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = (p**2).sum()  # g = 2x, g~ = 2(x - 0.5 * 2x) = 0
        ...     loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)
        >>> p.item()  # 1 - 0.25 * (2 + 0)
        0.5

    Note:
        Our reconstruction, as for :class:`SGDG2`. It shares SGD-G2's registry entry and
        capabilities (``sgdg2``); :func:`~lightning_dnn_tricks.optim.create_optimizer` knows it
        as ``srk2``.
    """

    spec: ClassVar[TrickSpec] = SRK2_SPEC

    def __init__(self, params: Iterable[Any], lr: float = 1e-2, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, weight_decay=weight_decay, mode="srk2")
