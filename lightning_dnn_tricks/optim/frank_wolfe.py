"""FW-RNN (Yue et al., ICPR 2020): Frank-Wolfe inner trajectories with restarts, around a base."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal

import torch
from torch.optim import Optimizer

from lightning_dnn_tricks.optim._common import (
    check_like_defaults,
    check_positive,
    checked_params,
    refuse_sparse,
)
from lightning_dnn_tricks.optim._lightning_support import check_lightning_support
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick
from lightning_dnn_tricks.validation import check_choice, check_number

Trajectory = Literal["official", "textbook"]
TRAJECTORIES: tuple[Trajectory, ...] = ("official", "textbook")
_OWN_KEYS = ("lr", "inner_steps", "radius", "trajectory", "tiny")

FRANK_WOLFE_SPEC = register_trick(
    TrickSpec(
        name="frank_wolfe",
        kind="optimizer",
        import_path="lightning_dnn_tricks.optim.frank_wolfe:FrankWolfe",
        summary="Frank-Wolfe inner trajectory in a small ball, restarted every K steps (FW-RNN).",
        paper="Yue et al., RNN Training along Locally Optimal Trajectories via Frank-Wolfe, "
        "ICPR 2020 (arXiv 2010.05397)",
        # One gradient per step and no closure: every precision and accumulation work.
        capabilities=Capabilities(effects=frozenset({"writes_weights_at_train_end"})),
        docs_page="methods/frank_wolfe.md",
    )
)

#: What goes wrong under Lightning without OptimizerSupport (the first step says so).
_WITHOUT_SUPPORT = (
    "validation, checkpoints and the weights left at the end of training would hold a point of "
    "the inner trajectory instead of the anchor weights"
)


def resolve_optimizer_class(value: str | type[Optimizer]) -> type[Optimizer]:
    """An optimizer class, or ``ValueError`` naming ``base_optimizer``; accepts dotted paths."""
    cls: Any = value
    if isinstance(value, str):
        module_name, _, attribute = value.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attribute)
        except (ImportError, AttributeError, ValueError):
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, Optimizer)):
        raise ValueError(
            "`base_optimizer` must be a torch.optim.Optimizer subclass or its dotted path "
            f"(e.g. 'torch.optim.Adam'), got {value!r}."
        )
    return cls


class FrankWolfe(Optimizer):
    r"""FW-RNN (Yue et al., ICPR 2020): Frank-Wolfe steps in a ball around the weights, restarted.

    Per parameter tensor ``p`` with inner length ``K = inner_steps`` and radius ``eps``
    (from the authors' code; see the FW-RNN method card):

    .. code-block:: text

        t = (step_count mod K) + 1
        if t == 1:  anchor <- p ; buf <- 0
        d    = grad(p) / (||grad(p)||_2 + tiny)      per-tensor L2-normalised gradient
        buf  = (1 - 1/t) buf - (eps / t) d
        p    = p + buf            ("official": cumulative, as the authors' code)
               anchor + buf       ("textbook": the Frank-Wolfe iterate)
        if t == K:
            p    <- anchor                           restart
            grad <- -buf / eps                       the mean of the normalised gradients
            base optimizer step (Adam by default)

    With ``radius=None`` an lr of exactly 0 (a warm-up from 0, ``PolynomialLR``,
    ``LinearLR(end_factor=0)``) gives ``eps = 0``: the step adds nothing to ``buf``, and a
    restart hands the base optimizer this step's ``d`` instead of ``-buf / eps`` (for ``K = 1``
    the two agree at every ``eps > 0``), so its lr of 0 makes a zero outer step and its state
    stays finite. Complex parameters are supported: norms are moduli, and with torch's Adam (which
    treats a complex tensor as pairs of reals) a run equals the one on ``torch.view_as_real`` of
    the parameter; another base optimizer must support complex tensors itself.

    ``K = 1`` is the base optimizer on per-tensor normalised gradients: the benchmark's ablation.
    The base optimizer is built over the same param groups (the group dicts are shared, so an LR
    scheduler acting on this optimizer changes the base optimizer's ``lr``); its state is part of
    :meth:`state_dict`. ``radius=None`` couples ``eps`` to the group's *current* ``lr`` (as in all
    the paper's experiments), so a scheduler moves both.

    Between restarts the parameters hold a point of the inner trajectory. :meth:`swap_to_anchor`
    puts the anchor weights (the last outer iterate) into the parameters for evaluation, saving
    and export, and :meth:`restore_position` puts the trajectory point back; :meth:`anchor_weights`
    does both around a block. While swapped, :meth:`state_dict` records the trajectory point,
    so a checkpoint holding the anchor as model weights resumes mid-trajectory exactly. On the
    Lightning path (``lightning_dnn_tricks.callbacks.OptimizerSupport``) validation, checkpoints
    and the end of training see the anchor weights without any per-step copy.

    Args:
        params: parameters, ``(name, parameter)`` pairs or param groups (a group may set ``lr``,
            ``inner_steps``, ``radius``, ``trajectory``, ``tiny`` and any option of the base
            optimizer). Dense gradients only.
        lr: learning rate of the base optimizer (> 0; a scheduler may take it to 0).
        inner_steps: ``K``, steps per inner trajectory (integer >= 1). The default 1 follows our
            measurement (row-sequential Fashion-MNIST and the adding problem, 3 seeds each):
            ``K = 1``, Adam on per-tensor normalised gradients, had the best mean on every
            task, and ``K = 5`` or ``10`` was never better at the same number of minibatches.
            ``K > 1`` adds the inner Frank-Wolfe trajectory, with ``K`` times fewer base steps.
        radius: ``eps``, radius of the ball (> 0); ``None`` means the group's current ``lr``.
        trajectory: ``"official"`` (cumulative, the authors' code) or ``"textbook"``.
        base_optimizer: the outer optimizer class or its dotted path (default Adam).
        base_kwargs: keyword arguments of the base optimizer other than ``lr``; a value whose
            default in the base's signature is a number must be a finite number (not a bool).
        tiny: added to the gradient norm (> 0), so a zero gradient gives ``d = 0``, not NaN.

    Raises:
        ValueError: an argument is out of range or NaN/inf, a number is a bool, an option is
            unknown (the message names the argument), or the base optimizer rejects
            ``base_kwargs``.
        TypeError: ``params`` is not an iterable of leaf tensors or param groups.
        TrickConfigurationError: (a ``ValueError``) at ``step``, before anything moves, when a
            gradient is sparse (``nn.Embedding(sparse=True)``: build it with ``sparse=False``),
            or on the first step a Lightning Trainer takes without
            ``callbacks.OptimizerSupport`` (the message names the fix,
            ``Trainer(callbacks=[OptimizerSupport()])``).
        RuntimeError: ``step`` is called while the anchor weights are swapped in.

    Examples:
        >>> import torch
        >>> rnn = torch.nn.RNN(2, 8, batch_first=True)
        >>> opt = FrankWolfe(rnn.parameters(), lr=1e-3, inner_steps=5)  # default K is 1
        >>> out, _ = rnn(torch.randn(4, 10, 2))
        >>> out.pow(2).mean().backward()
        >>> opt.step()
        >>> with opt.anchor_weights():  # evaluate or save the anchor weights here
        ...     pass

    Note:
        Deviations: ``tiny`` defaults to 1e-12; on restart the base optimizer steps only the
        tensors whose inner loop ended (all of them unless a tensor skipped steps), and their
        ``.grad`` is left holding ``-buf / eps``. Parameters without a gradient are skipped and
        their step counts do not advance. When ``t == K`` the trajectory move is skipped (the
        restart overwrites it). At ``eps = 0`` (see above) the restart gradient is ``d``: the
        paper's ``-buf / eps`` is undefined there. An lr set to 0 in the middle of a trajectory
        still lets ``buf`` (``"official"``: the weights) decay as ``(1 - 1/t) buf`` until the
        restart puts the anchor back; with an explicit ``radius`` the trajectory still explores
        the ball while the anchor stays fixed.
    """

    spec: ClassVar[TrickSpec] = FRANK_WOLFE_SPEC

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        inner_steps: int = 1,
        radius: float | None = None,
        trajectory: Trajectory = "official",
        base_optimizer: str | type[Optimizer] = "torch.optim.Adam",
        base_kwargs: dict[str, Any] | None = None,
        tiny: float = 1e-12,
    ) -> None:
        defaults = {
            "lr": lr,
            "inner_steps": inner_steps,
            "radius": radius,
            "trajectory": trajectory,
            "tiny": tiny,
        }
        self._check_group(defaults)
        base_cls = resolve_optimizer_class(base_optimizer)
        if base_kwargs is not None and not isinstance(base_kwargs, dict):
            raise ValueError(f"`base_kwargs` must be a dict or None, got {base_kwargs!r}.")
        kwargs = dict(base_kwargs or {})
        check_like_defaults("base_kwargs", kwargs, base_cls)
        clash = sorted(set(kwargs) & {"params", *_OWN_KEYS})
        if clash:
            raise ValueError(
                f"`base_kwargs` must not set {clash}: pass them to FrankWolfe itself, got "
                f"{base_kwargs!r}."
            )
        self.base_optimizer = base_optimizer
        self.base_kwargs = kwargs
        super().__init__(checked_params(params), defaults)
        try:
            self.base: Optimizer = base_cls(self.param_groups, lr=lr, **kwargs)  # type: ignore[call-arg]
        except (TypeError, ValueError) as error:
            raise ValueError(f"`base_kwargs` rejected by {base_cls.__name__}: {error}") from error

    @staticmethod
    def _check_group(group: dict[str, Any]) -> None:
        check_positive("lr", group["lr"])
        check_number("inner_steps", group["inner_steps"], low=1, integer=True)
        if group["radius"] is not None:
            check_positive("radius", group["radius"])
        check_choice("trajectory", group["trajectory"], TRAJECTORIES)
        check_positive("tiny", group["tiny"])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self._check_group({**self.defaults, **param_group})  # before the group is added
        super().add_param_group(param_group)
        if hasattr(self, "base"):  # groups added after construction go to the base too
            self.base.add_param_group(self.param_groups[-1])

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Our per-tensor state (step counts, anchors, buffers, positions) and the base state."""
        state = super().state_dict()
        state["base"] = self.base.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        base_state = state_dict.pop("base")
        super().load_state_dict(state_dict)
        self.base.load_state_dict(base_state)
        for index, group in enumerate(self.param_groups):  # share the group dicts again
            self.base.param_groups[index] = group

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(
            base=self.base, base_optimizer=self.base_optimizer, base_kwargs=self.base_kwargs
        )
        return state

    # -- anchor weights ------------------------------------------------------------------------
    def mid_trajectory(self) -> list[tuple[torch.Tensor, dict[str, Any]]]:
        """``(parameter, state)`` of every tensor whose weights differ from its anchor now."""
        found = []
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and state["fw_step"] % group["inner_steps"] != 0:
                    found.append((p, state))
        return found

    @property
    def swapped(self) -> bool:
        """Whether the parameters hold the anchor weights (after :meth:`swap_to_anchor`)."""
        return any("position" in state for state in self.state.values())

    @torch.no_grad()
    def swap_to_anchor(self) -> None:
        """Put the anchor weights into the parameters (no-op at a restart or when swapped)."""
        if self.swapped:
            return
        for p, state in self.mid_trajectory():
            state["position"] = p.detach().clone()
            p.copy_(state["anchor"])

    @torch.no_grad()
    def restore_position(self) -> None:
        """Put the inner-trajectory point back into the parameters (no-op unless swapped)."""
        for p, state in self.state.items():
            position = state.pop("position", None)
            if position is not None:
                p.copy_(position)

    @contextlib.contextmanager
    def anchor_weights(self) -> Iterator[None]:
        """Hold the anchor weights in the parameters inside the block."""
        was_swapped = self.swapped
        self.swap_to_anchor()
        try:
            yield
        finally:
            if not was_swapped:
                self.restore_position()

    # -- step ----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One inner Frank-Wolfe step; every ``inner_steps``-th one restarts with a base step."""
        check_lightning_support(self, _WITHOUT_SUPPORT)
        if self.swapped:
            raise RuntimeError(
                "FrankWolfe.step: the parameters hold the anchor weights (swap_to_anchor was "
                "called), so the gradient was not taken on the trajectory. Call "
                "restore_position() before the forward pass."
            )
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        for index, group in enumerate(self.param_groups):  # refuse before anything moves
            params = [p for p in group["params"] if p.grad is not None]
            refuse_sparse(type(self).__name__, index, params)
            work.append((group, params))
        restarting: list[torch.Tensor] = []
        for group, params in work:
            if params:
                restarting += self._inner_step(group, params)
        if restarting:
            self._base_step(restarting)
        return loss

    def _inner_step(self, group: dict[str, Any], params: list[torch.Tensor]) -> list[torch.Tensor]:
        k = int(group["inner_steps"])
        eps = float(group["lr"] if group["radius"] is None else group["radius"])
        states = [self.state[p] for p in params]
        for p, state in zip(params, states, strict=True):
            if not state:
                state["fw_step"] = 0
                state["buf"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if k > 1:
                    state["anchor"] = p.detach().clone()
        ts = [state["fw_step"] % k + 1 for state in states]
        first = [i for i, t in enumerate(ts) if t == 1]
        if first:
            torch._foreach_zero_([states[i]["buf"] for i in first])
            if k > 1:
                torch._foreach_copy_(
                    [states[i]["anchor"] for i in first], [params[i] for i in first]
                )
        grads: list[torch.Tensor] = [p.grad for p in params if p.grad is not None]
        norms = torch._foreach_norm(grads)
        torch._foreach_add_(norms, group["tiny"])
        directions = torch._foreach_div(grads, norms)
        bufs = [state["buf"] for state in states]
        torch._foreach_mul_(bufs, [1.0 - 1.0 / t for t in ts])
        if eps > 0.0:  # eps = 0 (an lr of 0) adds nothing, and d is kept for a restart
            torch._foreach_mul_(directions, [-eps / t for t in ts])
            torch._foreach_add_(bufs, directions)
        moving = [i for i, t in enumerate(ts) if t < k]
        if moving:
            moved = [params[i] for i in moving]
            if group["trajectory"] == "official":
                torch._foreach_add_(moved, [bufs[i] for i in moving])
            else:
                points = torch._foreach_add(
                    [states[i]["anchor"] for i in moving], [bufs[i] for i in moving]
                )
                torch._foreach_copy_(moved, points)
        ending = [i for i, t in enumerate(ts) if t == k]
        if ending:
            if k > 1:
                torch._foreach_copy_(
                    [params[i] for i in ending], [states[i]["anchor"] for i in ending]
                )
            ending_grads = [grads[i] for i in ending]
            if eps > 0.0:
                torch._foreach_copy_(ending_grads, [bufs[i] for i in ending])
                torch._foreach_div_(ending_grads, -eps)
            else:  # -buf / 0 is undefined: d, so the base's lr of 0 gives a zero step
                torch._foreach_copy_(ending_grads, [directions[i] for i in ending])
        for state in states:
            state["fw_step"] += 1
        return [params[i] for i in ending]

    def _base_step(self, restarting: list[torch.Tensor]) -> None:
        """Step the base optimizer on the restarting tensors only (the others' grads hidden)."""
        keep = {id(p) for p in restarting}
        hidden: list[tuple[torch.Tensor, torch.Tensor]] = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and id(p) not in keep:
                    hidden.append((p, p.grad))
                    p.grad = None
        try:
            self.base.step()
        finally:
            for p, grad in hidden:
                p.grad = grad
