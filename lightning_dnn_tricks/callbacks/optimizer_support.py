"""The Lightning path of this library's optimizers: checks, probe isolation and anchor weights."""

from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.hooks import RemovableHandle
from torchmetrics import Metric

from lightning_dnn_tricks.callbacks._lightning import (
    AverageUpdateHook,
    averaging_callbacks,
    should_log,
)
from lightning_dnn_tricks.callbacks.base import TrickCallback, finish_restarted_epoch
from lightning_dnn_tricks.composition import conflict, trick_party
from lightning_dnn_tricks.optim import SGDG2, FrankWolfe, preserve_buffers
from lightning_dnn_tricks.optim._common import AttributeFingerprint
from lightning_dnn_tricks.optim._lightning_support import mark_supported, register_trainer
from lightning_dnn_tricks.registry import Capabilities
from lightning_dnn_tricks.validation import TrickConfigurationError, TrickWarning

_OURS = (SGDG2, FrankWolfe)
#: Steps whose first evaluation is checked for state carried on the module: the first ones of a
#: fit, then a sample (a fingerprint costs a few us per module).
_CHECKED_STEPS, _CHECK_EVERY = 16, 100


def _unwrap(optimizer: Any) -> Any:
    return getattr(optimizer, "_optimizer", optimizer)  # LightningOptimizer -> the optimizer


@contextlib.contextmanager
def silenced_logging(pl_module: pl.LightningModule) -> Iterator[None]:
    """``pl_module.log`` and ``log_dict`` do nothing inside the block (no probe loss is logged)."""

    def skip(*args: Any, **kwargs: Any) -> None:
        return None

    names = ("log", "log_dict")
    shadowed = {name: pl_module.__dict__[name] for name in names if name in pl_module.__dict__}
    for name in names:
        setattr(pl_module, name, skip)
    try:
        yield
    finally:
        for name in names:
            if name in shadowed:
                setattr(pl_module, name, shadowed[name])
            else:
                delattr(pl_module, name)


@contextlib.contextmanager
def preserved_metric_states(pl_module: pl.LightningModule) -> Iterator[None]:
    """torchmetrics states updated inside the block are put back (metrics count a batch once)."""
    metrics = [m for m in pl_module.modules() if isinstance(m, Metric)]
    saved = [
        {
            name: value.clone() if isinstance(value, torch.Tensor) else list(value)
            for name, value in metric.metric_state.items()
        }
        for metric in metrics
    ]
    counts = [(metric._update_count, metric._computed) for metric in metrics]
    try:
        yield
    finally:
        for metric, states, (count, computed) in zip(metrics, saved, counts, strict=True):
            for name, value in states.items():
                setattr(metric, name, value)
            metric._update_count, metric._computed = count, computed


def watched_modules(pl_module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module and its submodules whose own attributes can carry state (not torchmetrics)."""
    metrics = [name for name, m in pl_module.named_modules() if isinstance(m, Metric)]
    return [
        (name, module)
        for name, module in pl_module.named_modules()
        if not any(name == m or name.startswith(m + ".") for m in metrics)
    ]


def _capability_checker(optimizer: torch.optim.Optimizer) -> TrickCallback:
    """A TrickCallback carrying the optimizer's registry spec, for the generic Trainer checks."""
    cls: Any = type(optimizer)
    checker: type[TrickCallback] = type(cls.__name__, (TrickCallback,), {"spec": cls.spec})
    return checker()


class OptimizerSupport(Callback):
    """Makes this library's optimizers safe under Lightning; inert when none is configured.

    Add it to the ``Trainer`` whenever ``configure_optimizers`` returns one of this library's
    optimizers (``SGDG2``, ``SRK2``, ``FrankWolfe``): ``Trainer(callbacks=[OptimizerSupport()])``.
    Installing the package adds nothing to any Trainer. Without it, the first step that Lightning
    takes with one of these optimizers raises :class:`TrickConfigurationError` naming this fix
    (plain PyTorch loops need no callback). The ``ldt`` command adds it when the configured
    optimizer is one of ours and the callbacks lack it. More than one instance is harmless (only
    the first acts). When fit starts (after ``configure_optimizers``, before the first step) it:

    - refuses, for the closure optimizers (``SGDG2``, ``SRK2``), ``precision="16-mixed"``
      (Lightning's fp16 GradScaler calls ``step()`` without the closure) and
      ``accumulate_grad_batches > 1`` (the probe would re-run only the last micro-batch), and
      checks every optimizer against its declared capabilities;
    - wraps the probe evaluation of the closure optimizers so that it does not move BatchNorm
      running statistics (any buffer) or torchmetrics states a second time and logs nothing:
      one loss, the one at ``X``, is logged per step (the optimizer itself replays the RNG, so
      dropout draws the same masks);
    - warns once (``TrickWarning``) when ``training_step`` changes the module's own attributes
      (plain tensors, numbers and tuples of tensors in the ``__dict__`` of the module and its
      submodules, torchmetrics excluded) during the first evaluation of a step: an RNN's hidden
      state carried between batches, a counter. The probe would then start from other values.
      Checked by identity and tensor version counters (no data read, no host sync) on the first
      16 steps of a fit and every 100th step after;
    - names the Trainer's LR schedulers of an ``SGDG2`` (``lr_scheduler_name``), so that the
      warning SGDG2 gives when something overwrites its adapted ``lr`` names the scheduler (a
      warning, not a refusal: a multiplicative schedule composes with the adaptation);
    - for ``FrankWolfe``, makes validation, checkpoints and the end of training see the anchor
      weights with no per-step copy: the anchors are swapped in around validation and when
      training ends; the module's ``state_dict`` (so every checkpoint, ``weights_only``
      included) holds the anchors of the tensors that are mid-trajectory, and a full
      checkpoint's optimizer state the trajectory point, so resuming mid-trajectory is exact.
      Other callbacks running between batches see the trajectory point;
    - logs ``sgdg2/lr`` (SRK2 too), the step size after each step, or
      ``frank_wolfe/restarts``, the outer steps (anchor restarts) completed so far. A count, not
      the inner step ``t``: sampled every ``log_every_n_steps``, ``t`` would alias to the same
      value whenever K divides the interval.

    It also marks the optimizers it has checked, which is what their first step under Lightning
    looks for.

    Raises:
        TrickConfigurationError: at fit start, when the Trainer conflicts with an optimizer.

    Warns:
        TrickWarning: state carried on the module between the two evaluations (see above).

    Examples:
        >>> import lightning.pytorch as pl
        >>> import torch
        >>> from lightning_dnn_tricks.optim import SGDG2
        >>> class Module(pl.LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = torch.nn.Linear(3, 1)
        ...     def training_step(self, batch, batch_idx):
        ...         return torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        ...     def configure_optimizers(self):
        ...         return SGDG2(self.parameters(), lr=0.01)
        >>> data = torch.utils.data.TensorDataset(torch.randn(8, 3), torch.randn(8, 1))
        >>> trainer = pl.Trainer(
        ...     callbacks=[OptimizerSupport()], max_steps=2, logger=False,
        ...     enable_checkpointing=False, enable_progress_bar=False,
        ...     enable_model_summary=False,
        ... )
        >>> trainer.fit(Module(), torch.utils.data.DataLoader(data, batch_size=4))
        >>> trainer.global_step
        2
    """

    def __init__(self) -> None:
        self._handles: list[RemovableHandle] = []
        self._frank_wolfe: list[FrankWolfe] = []
        self._closure_optimizers: list[SGDG2] = []
        self._validating: list[FrankWolfe] = []
        self._names: dict[int, str] = {}
        self._average_hooks: list[AverageUpdateHook] = []
        self._averaging: list[FrankWolfe] = []
        self._watched: list[tuple[str, nn.Module]] = []
        self._carried: list[str] = []
        self._warned_carried = False
        self._steps = 0
        self._supported: list[torch.optim.Optimizer] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":  # steps taken before on_fit_start (the Tuner's) find the Trainer
            register_trainer(trainer, active=True)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release()
        callbacks: list[Callback] = trainer.callbacks  # type: ignore[attr-defined]
        first = next(cb for cb in callbacks if isinstance(cb, OptimizerSupport))
        if first is not self:
            return
        for optimizer in (_unwrap(o) for o in trainer.optimizers):
            if not isinstance(optimizer, _OURS):
                continue
            self.check(trainer, pl_module, optimizer)
            mark_supported(optimizer, supported=True)
            self._supported.append(optimizer)
            if isinstance(optimizer, SGDG2):
                self._watched = watched_modules(pl_module)
                self._handles += [
                    optimizer.register_first_evaluation_hook(self._first_evaluation),
                    optimizer.register_probe_hook(
                        functools.partial(self._probe, pl_module, optimizer)
                    ),
                ]
                optimizer.lr_scheduler_name = self._scheduler_names(trainer, optimizer)
                self._closure_optimizers.append(optimizer)
            else:
                self._frank_wolfe.append(optimizer)
        if self._frank_wolfe:
            # Averaged weights (EMA, SWA) are averages of the anchors, and the anchors are put in
            # before an average is copied into the model, so nothing writes over the average.
            self._average_hooks = [
                AverageUpdateHook(
                    callback,
                    before_update=lambda _: self._swap_for_average(),
                    after_update=lambda _, __: self._restore_after_average(),
                    before_transfer=lambda _: self._swap_for_transfer(),
                )
                for callback in averaging_callbacks(trainer)
            ]
            self._names = {id(v): k for k, v in pl_module.state_dict(keep_vars=True).items()}
            register = getattr(pl_module, "register_state_dict_post_hook", None)
            if register is None:  # torch < 2.5: the same hook under its older, private name
                register = pl_module._register_state_dict_hook
            # A partial, not the bound method: torch marks hooks with an attribute.
            self._handles.append(register(functools.partial(self._anchor_state_dict)))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._frank_wolfe or self._closure_optimizers:
            finish_restarted_epoch(trainer)

    def check(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        """Raise :class:`TrickConfigurationError` when the Trainer conflicts with ``optimizer``."""
        name = type(optimizer).__name__
        caps: Capabilities = type(optimizer).spec.capabilities  # type: ignore[attr-defined]
        if caps.needs_closure and str(trainer.precision) == "16-mixed":
            raise TrickConfigurationError(
                f"{name}: precision='16-mixed' is not supported: Lightning's fp16 GradScaler "
                f"calls optimizer.step() without the closure, and {name} must evaluate the "
                "gradient twice per step. Use precision='bf16-mixed' or '32-true'."
            )
        if caps.needs_closure and trainer.accumulate_grad_batches > 1:
            raise TrickConfigurationError(
                f"{name}: accumulate_grad_batches={trainer.accumulate_grad_batches} is not "
                "supported: the second (probe) gradient evaluation would re-run only the last "
                "micro-batch and add it to the accumulated gradient. Set "
                "accumulate_grad_batches=1 and raise the batch size instead."
            )
        checker = _capability_checker(optimizer)
        checker.check_trainer(trainer, pl_module)
        if hasattr(trainer, "callbacks"):
            checker.check_company(trainer)
        ours = [o for o in map(_unwrap, getattr(trainer, "optimizers", [])) if isinstance(o, _OURS)]
        if len(ours) > 1:
            first, second = (type(o).spec for o in ours[:2])
            message = conflict(trick_party(first), trick_party(second))
            if message is not None:
                raise TrickConfigurationError(message)

    @staticmethod
    def _scheduler_names(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> str | None:
        """The Trainer's LR schedulers of ``optimizer`` by class name, for SGDG2's warning."""
        names = [
            f"{type(config.scheduler).__name__} (the Trainer's LR scheduler, interval "
            f"{config.interval!r})"
            for config in getattr(trainer, "lr_scheduler_configs", [])
            if _unwrap(getattr(config.scheduler, "optimizer", None)) is optimizer
        ]
        return ", ".join(names) or None

    @contextlib.contextmanager
    def _first_evaluation(self) -> Iterator[None]:
        """Records which of the module's own attributes the first evaluation changes: on the
        first ``_CHECKED_STEPS`` steps of a fit, then every ``_CHECK_EVERY``-th (a few us per
        module each time, in Python)."""
        self._steps += 1
        sampled = self._steps <= _CHECKED_STEPS or self._steps % _CHECK_EVERY == 0
        if self._warned_carried or not sampled:
            yield
            return
        before = AttributeFingerprint(self._watched)
        yield
        self._carried = AttributeFingerprint(self._watched).changed_since(before)

    @contextlib.contextmanager
    def _probe(self, pl_module: pl.LightningModule, optimizer: SGDG2) -> Iterator[None]:
        if self._carried and not self._warned_carried:
            self._warned_carried = True
            warnings.warn(
                f"{type(optimizer).__name__}: training_step changed the module's own "
                f"attributes {self._carried} during the first gradient evaluation of the step "
                "(state carried between calls: an RNN's hidden state, a counter), so the probe's "
                "second evaluation starts from other values: its gradient is taken at a "
                "different point, the probe changes them again, and the next batch sees what "
                "the probe left. Pass such state with the batch or reset it in training_step, "
                "or use a one-evaluation optimizer. Warned once.",
                TrickWarning,
                stacklevel=2,
            )
        with (
            preserve_buffers(pl_module),
            preserved_metric_states(pl_module),
            silenced_logging(pl_module),
        ):
            yield

    # -- FrankWolfe: anchor weights outside the training steps ----------------------------------
    def _swap_all(self) -> list[FrankWolfe]:
        swapped = [fw for fw in self._frank_wolfe if not fw.swapped]
        for fw in swapped:
            fw.swap_to_anchor()
        return swapped

    def _swap_for_transfer(self) -> None:
        self._swap_all()

    def _swap_for_average(self) -> None:
        self._averaging = self._swap_all()

    def _restore_after_average(self) -> None:
        for fw in self._averaging:
            fw.restore_position()
        self._averaging = []

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        for fw in self._frank_wolfe:  # after a resume or a previous fit the anchor is swapped in
            fw.restore_position()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._validating = self._swap_all()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for fw in self._validating:
            fw.restore_position()
        self._validating = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swap_all()

    def _anchor_state_dict(
        self, module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: Any
    ) -> None:
        """Module state-dict hook: mid-trajectory parameters are saved as their anchors."""
        for fw in self._frank_wolfe:
            if fw.swapped:
                continue
            for p, state in fw.mid_trajectory():
                name = self._names.get(id(p))
                if name is not None and prefix + name in state_dict:
                    state_dict[prefix + name] = state["anchor"]

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """The optimizer state records the trajectory point that the saved anchors replace."""
        states = checkpoint.get("optimizer_states")
        for optimizer_index, optimizer in enumerate(_unwrap(o) for o in trainer.optimizers):
            if optimizer not in self._frank_wolfe or optimizer.swapped or states is None:
                continue
            packed = states[optimizer_index]["state"]
            order = [p for group in optimizer.param_groups for p in group["params"]]
            index = {id(p): i for i, p in enumerate(order)}
            for p, _ in optimizer.mid_trajectory():
                entry = packed[index[id(p)]]  # the live state dict: copy, do not mutate
                packed[index[id(p)]] = {**entry, "position": p.detach().clone()}

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if should_log(trainer):
            self._log(trainer, pl_module)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Log ``sgdg2/lr`` (the adapted step size) or ``frank_wolfe/restarts``."""
        for optimizer in self._closure_optimizers:
            group = optimizer.param_groups[0]
            pl_module.log(f"{optimizer.spec.name}/lr", float(group["lr"]), on_step=True)
        for fw in self._frank_wolfe:
            group = fw.param_groups[0]
            steps = [fw.state[p]["fw_step"] for p in group["params"] if p in fw.state]
            if steps:
                restarts = steps[0] // group["inner_steps"]
                pl_module.log("frank_wolfe/restarts", float(restarts), on_step=True)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        register_trainer(trainer, active=False)  # teardown is not called after an exception
        for optimizer in self._supported:
            mark_supported(optimizer, supported=False)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            register_trainer(trainer, active=False)
            self._release()

    def _release(self) -> None:
        for optimizer in self._supported:
            mark_supported(optimizer, supported=False)
        self._supported = []
        for handle in self._handles:
            handle.remove()
        for hook in self._average_hooks:
            hook.remove()
        for optimizer in self._closure_optimizers:
            optimizer.lr_scheduler_name = None
        self._watched, self._carried, self._warned_carried, self._steps = [], [], False, 0
        self._average_hooks, self._averaging = [], []
        self._handles, self._frank_wolfe, self._closure_optimizers = [], [], []
        self._validating, self._names = [], {}
