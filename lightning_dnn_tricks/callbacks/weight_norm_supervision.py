"""Lightning adapter for Weight Norm Supervision: per-group spectral-norm penalties, projections."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.hooks import RemovableHandle

from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.functional.weight_norm_supervision import (
    ESTIMATES,
    Estimate,
    SpectralNormEstimate,
    WeightOperator,
    add_spectral_penalty_grad_,
    converge_spectral_norms,
    initial_vector,
    power_iteration,
    project_spectral_norm_,
    weight_operator,
)
from lightning_dnn_tricks.nn.selection import check_pattern
from lightning_dnn_tricks.nn.weight_align import is_weight_aligned
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick
from lightning_dnn_tricks.validation import TrickWarning, check_choice, check_number

WEIGHT_NORM_SUPERVISION_SPEC = register_trick(
    TrickSpec(
        name="weight_norm_supervision",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.weight_norm_supervision:WeightNormSupervision",
        summary="Bound the spectral norms of recurrent, feedforward and feedback weights per group "
        "(penalty or projection) to keep recurrent and predictive coding networks stable.",
        paper="Guo, Weight Norm Supervision, ICPR 2020",
        capabilities=Capabilities(
            manual_optimization=True,
            effects=frozenset({"bounds_spectral_norm", "edits_gradients_dense"}),
        ),
        reconstruction=True,
        docs_page="methods/weight_norm_supervision.md",
    )
)

Mode = Literal["penalty", "project"]
MODES: tuple[Mode, ...] = ("penalty", "project")

#: Module types whose ``weight*`` parameters (dim >= 2) can be supervised.
SUPERVISED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.modules.conv._ConvNd,
    nn.RNNBase,
    nn.RNNCellBase,
)
#: Power iterations run when a parameter's persistent vector is first created.
WARMUP_ITERATIONS = 10
#: Seed of the fixed random vector mixed into the start of the near-bound check.
MIX_SEED = 1


@dataclass(frozen=True)
class NormGroup:
    """One group of supervised weights, with its bound, mode and strength.

    A parameter is a candidate when it is a trainable ``weight*`` tensor (``weight``,
    ``weight_hh_l0``, ``weight_ih_l1``...) with ``dim >= 2`` of a module of ``layer_types``.
    It belongs to the *first* group of the callback's list whose filters it passes.

    Args:
        name: the group's name (used in the logged metric ``wns/<name>/max_norm``).
        bound: ``rho``, the largest allowed spectral norm (> 0).
        mode: ``"penalty"`` (add ``strength * relu(sigma - rho)^2``'s gradient) or ``"project"``
            (rescale ``W <- W * rho / sigma`` after each optimizer step when ``sigma > rho``).
        strength: ``lambda`` of the penalty (> 0; unused by ``"project"``).
        include: regular expression on the parameter's qualified name (``re.search``), e.g.
            ``"weight_hh"`` for recurrent matrices or ``"feedback"`` for a PCN's feedback convs.
        exclude: regular expression on the qualified name to leave out.
        layer_types: owner module classes (``isinstance``); ``None``: all supervised types
            (linear, convolutions and transposed convolutions, RNN/GRU/LSTM layers and cells).
        estimate: ``"operator"`` (a conv is the convolution on its last input's shape, by power
            iteration through conv/transposed conv) or ``"reshape"`` (the weight reshaped to
            ``(C_out, -1)`` times ``sqrt(prod ceil(k/s))``: a cheaper upper bound). Matrices are
            the same either way.

    Raises:
        ValueError: an argument is out of range (the message names it).
    """

    name: str
    bound: float = 1.0
    mode: Mode = "project"
    strength: float = 1.0
    include: str | None = None
    exclude: str | None = None
    layer_types: tuple[type[nn.Module], ...] | None = None
    estimate: Estimate = "operator"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(
                f"`name` must be a non-empty word ([A-Za-z0-9_.-]), got {self.name!r}."
            )
        check_number("bound", self.bound, low=0.0, low_inclusive=False)
        check_choice("mode", self.mode, MODES)
        check_number("strength", self.strength, low=0.0, low_inclusive=False)
        check_pattern("include", self.include)
        check_pattern("exclude", self.exclude)
        check_choice("estimate", self.estimate, ESTIMATES)
        types = self.layer_types
        if types is not None and (
            not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types)
        ):
            raise ValueError(
                f"`layer_types` must be None or a non-empty sequence of nn.Module classes, got "
                f"{types!r}."
            )
        if types is not None:
            object.__setattr__(self, "layer_types", tuple(types))

    def matches(self, qualified_name: str, module: nn.Module) -> bool:
        """Whether the parameter ``qualified_name`` of ``module`` passes this group's filters."""
        if not isinstance(module, self.layer_types or SUPERVISED_TYPES):
            return False
        if self.include is not None and not re.search(self.include, qualified_name):
            return False
        return self.exclude is None or not re.search(self.exclude, qualified_name)


#: The default: every recurrent matrix (``weight_hh*``) projected to spectral norm <= 0.95.
DEFAULT_GROUPS: tuple[NormGroup, ...] = (
    NormGroup("recurrent", bound=0.95, mode="project", include=r"weight_hh"),
)


def _as_group(index: int, group: NormGroup | Mapping[str, Any]) -> NormGroup:
    if isinstance(group, NormGroup):
        return group
    if not isinstance(group, Mapping):
        raise ValueError(f"`groups` must hold NormGroup objects or dicts, got {group!r}.")
    unknown = set(group) - {f.name for f in fields(NormGroup)}
    if unknown or "name" not in group:
        raise ValueError(
            f"`groups`[{index}] needs a `name` and only NormGroup fields, got {dict(group)!r}."
        )
    try:
        return NormGroup(**group)
    except ValueError as error:
        raise ValueError(f"`groups`[{index}] ({group.get('name')!r}): {error}") from None


@dataclass
class _Supervised:
    """One supervised parameter: its name, group, owner module and current operator."""

    name: str
    group: int
    param: nn.Parameter
    module: nn.Module
    operator: WeightOperator | None = None


class WeightNormSupervision(TrickCallback):
    """Weight Norm Supervision (Guo, ICPR 2020): per-group bounds on spectral norms.

    Each group of weights (recurrent, feedforward, feedback...) gets its own bound ``rho`` on the
    spectral norm ``sigma(W)``, estimated by power iteration with a persistent vector
    (``iterations`` per step). Mode ``"penalty"`` adds the gradient of
    ``strength * relu(sigma - rho)^2`` in ``on_before_optimizer_step`` (after AMP unscaling, once
    per optimizer step); mode ``"project"`` rescales ``W <- W * rho / sigma`` right after each
    optimizer step (an optimizer step post-hook), with ``sigma`` from the near-bound check below.
    Convolutions and transposed convolutions are the operators they apply to their last input
    (recorded by a forward hook), or a cheaper reshaped upper bound (``estimate="reshape"``). The
    persistent vectors are in the callback's ``state_dict``, so a resumed run continues exactly.

    Logged at the Trainer's ``log_every_n_steps``: ``wns/<group>/max_norm``, the group's largest
    norm as *measured* in the step, before any projection (a step that pushed a weight past its
    bound shows above the bound; never a clipped value), and for projected groups
    ``wns/<group>/projected``, the fraction of the group's weights projected in the step.
    ``last_iterations`` holds each weight's iterations in its last step.

    Args:
        groups: the groups, first match wins (``NormGroup`` objects or dicts of its fields);
            default: recurrent ``weight_hh*`` matrices projected to ``<= 0.95``.
        iterations: power iterations per optimizer step and parameter (>= 1).
        tolerance: the relative tolerance of the bound after a projection (``[0.001, 0.5]``):
            the exact norm is held to ``<= rho * (1 + tolerance)``; see the note.
        margin: the near-bound check runs when a projected weight's estimate exceeds
            ``(1 - margin) * rho`` (``[0, 1]``; 1: at every step). Below, the weight is left
            alone without further iterations.
        max_iterations: the most iterations of the near-bound check per weight and step (0: no
            check, the projection uses the ``iterations``-step estimate as it is; else >= 2).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TrickConfigurationError: at fit start, a group matches a weight that WeightAlign aligns
            (the message names the layer and the fix).
            At resume, a checkpoint written with other ``groups`` is refused; a change of
            ``iterations``, ``tolerance``, ``margin`` or ``max_iterations`` is accepted with a
            warning.

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_dnn_tricks.callbacks import NormGroup, WeightNormSupervision
        >>> wns = WeightNormSupervision(groups=[
        ...     NormGroup("recurrent", bound=0.95, mode="project", include="weight_hh"),
        ...     NormGroup("feedback", bound=1.0, mode="penalty", strength=0.1, include="feedback"),
        ... ])
        >>> trainer = pl.Trainer(callbacks=[wns], logger=False)

    Note:
        **The bound after a projection.** Power iteration's estimate is a *lower* bound of the
        true norm, so projecting with it alone (one iteration from a vector made stale by a large
        update) leaves the weight over its bound: on an LSTM trained with SGD at lr 20 the exact
        norm reached several times the bound. So when an estimate exceeds
        ``(1 - margin) * rho`` the callback first runs the near-bound check
        (:func:`~lightning_dnn_tricks.functional.weight_norm_supervision.converge_spectral_norms`:
        Golub-Kahan-Lanczos bidiagonalisation from the persistent vector with a fixed random
        vector mixed in, until the estimate changes by at most ``tolerance**2 / 10`` per
        iteration, at most ``max_iterations``) and projects with the larger of the two
        estimates. Then ``||W||_2 <= rho * (1 + tolerance)`` after every projection, in every
        test and in ``benchmarks/weight_norm_supervision_bound.py`` (1% by default). It is a
        measured tolerance, not a proof: no finite number of iterations certifies a largest
        singular value, and a long plateau of the estimate (a top singular vector that is new
        and almost orthogonal to the persistent and the random vector) can stop the check
        early. A weight whose estimate is below ``(1 - margin) * rho`` is not checked: a
        stale vector that under-estimates a weight by more than ``1 / (1 - margin)`` (2x at the
        default margin) leaves it unprojected for that step; ``margin=1`` checks at every step.
        Cost: the cheap ``iterations`` estimate of every projected weight is read from the
        device once per optimizer step (all weights together); the check adds one forward and one
        adjoint application per iteration and weight and one read per iteration (all weights
        together), typically 5 to 15 iterations while a weight sits at its bound. The penalty
        mode uses the ``iterations`` estimate only.

        The constraint scheme (groups, bounds, the two modes, the defaults) is our
        reconstruction: the paper's body was not available. For LSTM/GRU ``weight_hh`` is the
        stacked gate matrix. Parametrised weights (``torch.nn.utils.parametrize``) are not
        supervised: a weight aligned by WeightAlign is refused at fit start, another
        parametrised weight a group matches gets a ``TrickWarning``.
    """

    spec = WEIGHT_NORM_SUPERVISION_SPEC
    identity_arguments = ("groups",)
    resume_may_change = ("iterations", "tolerance", "margin", "max_iterations")

    def __init__(
        self,
        groups: Sequence[NormGroup] | None = None,
        iterations: int = 1,
        tolerance: float = 0.01,
        margin: float = 0.5,
        max_iterations: int = 100,
    ) -> None:
        check_number("iterations", iterations, low=1, high=100, integer=True)
        check_number("tolerance", tolerance, low=1e-3, high=0.5)
        check_number("margin", margin, low=0.0, high=1.0)
        check_number("max_iterations", max_iterations, low=0, high=10_000, integer=True)
        if max_iterations == 1:
            raise ValueError("`max_iterations` must be 0 (no check) or >= 2, got 1.")
        if groups is not None and (isinstance(groups, str | Mapping) or not groups):
            raise ValueError(f"`groups` must be a non-empty sequence or None, got {groups!r}.")
        resolved = DEFAULT_GROUPS if groups is None else groups
        self.groups = [_as_group(i, group) for i, group in enumerate(resolved)]
        names = [group.name for group in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"`groups` must have distinct names, got {names}.")
        self.iterations = iterations
        self.tolerance = float(tolerance)
        self.margin = float(margin)
        self.max_iterations = max_iterations
        self._supervised: list[_Supervised] = []
        self._vectors: dict[str, torch.Tensor] = {}
        self._mix: dict[str, torch.Tensor] = {}
        self._shapes: dict[nn.Module, tuple[tuple[int, ...], tuple[int, ...]]] = {}
        self._norms: dict[str, float] = {}
        self._projected: dict[str, list[int]] = {}
        #: Iterations run in the last step, by parameter name (the near-bound check's included).
        self.last_iterations: dict[str, int] = {}
        self._params: list[torch.Tensor] = []
        self._handles: list[RemovableHandle] = []

    # ------------------------------------------------------------------ selection
    def select(self, model: nn.Module) -> dict[str, list[str]]:
        """The qualified parameter names each group supervises in ``model``."""
        chosen: dict[str, list[str]] = {group.name: [] for group in self.groups}
        for item in self._select(model):
            chosen[self.groups[item.group].name].append(item.name)
        return chosen

    def _select(self, model: nn.Module) -> list[_Supervised]:
        selected: list[_Supervised] = []
        seen: set[int] = set()
        for module_name, module in model.named_modules():
            for param_name, param in module.named_parameters(recurse=False):
                if not param_name.startswith("weight") or param.dim() < 2:
                    continue
                if id(param) in seen:  # frozen ones too: unfrozen later, then supervised
                    continue
                name = f"{module_name}.{param_name}" if module_name else param_name
                for index, group in enumerate(self.groups):
                    if group.matches(name, module):
                        selected.append(_Supervised(name, index, param, module))
                        seen.add(id(param))
                        break
        return selected

    def _check_parametrised(self, model: nn.Module) -> None:
        """Refuse weights aligned by WeightAlign that a group matches; warn for others."""
        for module_name, module in model.named_modules():
            if not parametrize.is_parametrized(module):
                continue
            for tensor_name in module.parametrizations:
                if not tensor_name.startswith("weight"):
                    continue
                name = f"{module_name}.{tensor_name}" if module_name else tensor_name
                group = next((g for g in self.groups if g.matches(name, module)), None)
                if group is None:
                    continue
                raw = f"{module_name}.parametrizations.{tensor_name}.original".lstrip(".")
                layer = re.escape(module_name)
                if tensor_name == "weight" and is_weight_aligned(module):
                    self._refuse(
                        f"group {group.name!r} matches {name!r}, a weight aligned by WeightAlign "
                        f"(a parametrisation: the trainable tensor is {raw!r}), which Weight "
                        "Norm Supervision cannot supervise. WeightAlign fixes each filter's "
                        "scale through its gain, so a spectral bound on the raw weight has no "
                        "effect.",
                        f"Exclude the layer from the WNS group (e.g. NormGroup({group.name!r}, "
                        f"..., exclude=r'^{layer}\\.')) or from WeightAlign "
                        f"(WeightAlign(exclude=r'^{layer}$')).",
                    )
                warnings.warn(
                    f"WeightNormSupervision: group {group.name!r} matches {name!r}, a weight "
                    f"behind a parametrisation (its trainable tensor is {raw!r}); it is not "
                    "supervised. Exclude it from the group to silence this warning.",
                    TrickWarning,
                    stacklevel=3,
                )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._remove_hooks()
        self._check_parametrised(pl_module)
        self._supervised = self._select(pl_module)
        if not self._supervised:
            warnings.warn(
                "WeightNormSupervision matched no parameter: nothing will be supervised. Check "
                "the groups' `include`, `exclude` and `layer_types`.",
                TrickWarning,
                stacklevel=2,
            )
        for name, found in self.select(pl_module).items():
            rank_zero_info(
                f"WeightNormSupervision: group {name!r} supervises {len(found)} weights."
            )
        for item in self._supervised:
            if self._needs_shape(item):
                hook = item.module.register_forward_hook(self._record_shape)
                self._handles.append(hook)
        self._params = [item.param for item in self._supervised]
        for optimizer in trainer.optimizers:
            self._handles.append(optimizer.register_step_post_hook(self._after_step))

    def _needs_shape(self, item: _Supervised) -> bool:
        return (
            isinstance(item.module, nn.modules.conv._ConvNd)
            and item.param is item.module.weight
            and self.groups[item.group].estimate == "operator"
        )

    def _record_shape(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        x = args[0]
        weight = module.weight
        assert isinstance(weight, torch.Tensor)
        batched = x.dim() == weight.dim()
        self._shapes[module] = (
            tuple(x.shape[1:] if batched else x.shape),
            tuple(output.shape[1:] if batched else output.shape),
        )

    # ------------------------------------------------------------------ estimation
    def _operator(self, item: _Supervised) -> WeightOperator | None:
        estimate = self.groups[item.group].estimate
        if not self._needs_shape(item):
            if item.operator is None:
                item.operator = weight_operator(item.param, item.module, estimate)
            return item.operator
        shapes = self._shapes.get(item.module)
        if shapes is None:
            return None  # not called yet: nothing to estimate
        current = item.operator
        if current is None or (current.input_shape, current.output_shape) != shapes:
            item.operator = weight_operator(item.param, item.module, estimate, *shapes)
        return item.operator

    def _estimate(self, item: _Supervised) -> Any:
        operator = self._operator(item)
        if operator is None:
            return None, None
        vector = self._vectors.get(item.name)
        iterations = self.iterations
        if vector is None or tuple(vector.shape) != operator.input_shape:
            vector = initial_vector(operator, device=item.param.device)
            iterations = max(iterations, WARMUP_ITERATIONS)
        estimate = power_iteration(item.param, operator, vector.to(item.param.device), iterations)
        self.last_iterations[item.name] = iterations
        self._vectors[item.name] = estimate.v
        return operator, estimate

    def _mix_vector(self, item: _Supervised, operator: WeightOperator) -> torch.Tensor:
        mix = self._mix.get(item.name)
        if mix is None or tuple(mix.shape) != operator.input_shape:
            mix = self._mix[item.name] = initial_vector(operator, MIX_SEED, item.param.device)
        return mix

    def _record(self, item: _Supervised, norm: float, projected: bool | None = None) -> None:
        group = self.groups[item.group].name
        self._norms[group] = max(self._norms.get(group, 0.0), norm)
        if projected is not None:
            counts = self._projected.setdefault(group, [0, 0])
            counts[0] += int(projected)
            counts[1] += 1

    def _stepping(self, optimizer: torch.optim.Optimizer) -> set[int]:
        """Ids of the supervised tensors that ``optimizer`` trains (frozen ones left out)."""
        return {id(t) for t in self.stepping_tensors(optimizer, self._params)}

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        stepping = self._stepping(optimizer)
        for item in self._supervised:
            group = self.groups[item.group]
            if group.mode != "penalty" or id(item.param) not in stepping:
                continue
            operator, estimate = self._estimate(item)
            if estimate is None:
                continue
            add_spectral_penalty_grad_(item.param, operator, estimate, group.bound, group.strength)
            self._record(item, float(estimate.sigma))

    def _after_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._project(optimizer)

    def _project(self, optimizer: torch.optim.Optimizer) -> None:
        """Estimate, check near the bound, then project the weights of one optimizer."""
        found: list[tuple[_Supervised, WeightOperator, SpectralNormEstimate]] = []
        stepping = self._stepping(optimizer)
        for item in self._supervised:
            if self.groups[item.group].mode != "project" or id(item.param) not in stepping:
                continue
            operator, estimate = self._estimate(item)
            if estimate is not None:
                found.append((item, operator, estimate))
        if not found:
            return
        device = found[0][2].sigma.device
        # The one read from the device on a step far below the bounds: every estimate at once.
        sigmas = torch.stack([e.sigma.to(device) for _, _, e in found]).tolist()
        near = [
            k
            for k, (item, _, _) in enumerate(found)
            if self.max_iterations
            and sigmas[k] > (1.0 - self.margin) * self.groups[item.group].bound
        ]
        if near:
            checked = converge_spectral_norms(
                [found[k][0].param for k in near],
                [found[k][1] for k in near],
                [found[k][2].v for k in near],
                tolerance=self.tolerance,
                max_iterations=self.max_iterations,
                mix_vectors=[self._mix_vector(found[k][0], found[k][1]) for k in near],
            )
            for position, k in enumerate(near):
                item = found[k][0]
                self.last_iterations[item.name] += checked.iterations[position]
                if checked.sigmas[position] >= sigmas[k]:  # both are lower bounds: the larger
                    sigmas[k] = checked.sigmas[position]
                    self._vectors[item.name] = checked.estimates[position].v
        for k, (item, _, _) in enumerate(found):
            bound = self.groups[item.group].bound
            # the measured norm, before the projection: a violation shows in the log
            self._record(item, sigmas[k], projected=sigmas[k] > bound)
            project_spectral_norm_(item.param, sigmas[k], bound)

    # ------------------------------------------------------------------ logging and state
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._norms and self.logging_now(trainer):
            metrics = {f"wns/{group}/max_norm": norm for group, norm in self._norms.items()}
            for group, (projected, total) in self._projected.items():
                metrics[f"wns/{group}/projected"] = projected / total
            self.log_metrics(trainer, pl_module, metrics)
        self._norms = {}
        self._projected = {}

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": {k: v.detach().cpu().clone() for k, v in self._vectors.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._vectors = {k: v.clone() for k, v in state_dict.get("vectors", {}).items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(
            _supervised=[],
            _shapes={},
            _handles=[],
            _params=[],
            _stepping_cache={},
            _norms={},
            _projected={},
            _mix={},
        )
        return state
