"""The base class of every trick callback: capability checks against the Trainer at ``setup``."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, NoReturn

import lightning.pytorch as pl
import lightning.pytorch.callbacks as lightning_callbacks
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    SingleDeviceStrategy,
    Strategy,
)

from lightning_dnn_tricks.callbacks._lightning import (
    restarted_into_finished_epoch,
    should_log,
    training_loader_slots,
)
from lightning_dnn_tricks.composition import (
    BUILTIN_CALLBACKS,
    Party,
    builtin_party,
    conflict,
    trick_party,
)
from lightning_dnn_tricks.registry import TrickSpec
from lightning_dnn_tricks.validation import TrickConfigurationError, TrickWarning

#: The checkpoint key under which every trick callback records its configuration.
CONFIGURATION_KEY = "lightning_dnn_tricks_configuration"


def strategy_name(strategy: Strategy) -> str:
    """The capability name of a Lightning strategy (``single_device``, ``ddp`` or its class)."""
    if isinstance(strategy, SingleDeviceStrategy):
        return "single_device"
    if isinstance(strategy, DDPStrategy) and not isinstance(strategy, DeepSpeedStrategy):
        return "ddp"
    return type(strategy).__name__


class TrickCallback(Callback):
    """A Lightning callback that checks its declared capabilities before training.

    Subclasses set ``spec`` (their registry entry) and keep all maths in ``functional``/``nn``.
    ``setup`` raises :class:`~lightning_dnn_tricks.TrickConfigurationError` naming the conflict and
    the fix when the Trainer asks for something the trick does not support; ``on_fit_start`` does
    the same for the optimizers, which exist only then.
    """

    spec: ClassVar[TrickSpec]
    #: Constructor arguments that say *what* an instance acts on (its layer selection). Two
    #: instances in one Trainer differ in them, and ``state_key`` is built from them, so that each
    #: instance gets its own state in a checkpoint.
    identity_arguments: ClassVar[tuple[str, ...]] = ()
    #: Constructor arguments that may change when a run resumes from a checkpoint: a change is
    #: warned about. A change of any other argument is refused (see :meth:`on_load_checkpoint`).
    resume_may_change: ClassVar[tuple[str, ...]] = ()

    @property
    def state_key(self) -> str:
        """The checkpoint key of this instance's state: the class name, plus the identity
        arguments that differ from their defaults (so two instances of one trick can share a
        Trainer, and a checkpoint of the default configuration keeps the plain class name)."""
        defaults = inspect.signature(type(self).__init__).parameters
        differing = {}
        for name in self.identity_arguments:
            value = getattr(self, name)
            default = defaults[name].default if name in defaults else inspect.Parameter.empty
            if default is inspect.Parameter.empty or _normalised(value) != _normalised(default):
                differing[name] = _describe(value)
        if not differing:
            return type(self).__qualname__
        return self._generate_state_key(**differing)

    def configuration(self) -> dict[str, str]:
        """The constructor arguments of this instance, described as strings (for checkpoints)."""
        names = inspect.signature(type(self).__init__).parameters
        return {name: _describe(getattr(self, name)) for name in names if hasattr(self, name)}

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Record the configuration, so that a resume with another one is noticed."""
        checkpoint.setdefault(CONFIGURATION_KEY, {})[self.state_key] = self.configuration()

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Refuse a checkpoint of this trick under another identity or with another
        configuration; warn about a change of the arguments in ``resume_may_change``."""
        saved = [
            key
            for key in checkpoint.get("callbacks", {})
            if isinstance(key, str) and key.split("{", 1)[0] == type(self).__qualname__
        ]
        if saved and self.state_key not in saved:
            self._refuse(
                f"the checkpoint holds the state of {', '.join(saved)}, not of this instance "
                f"({self.state_key}): its layer selection differs.",
                "Resume with the same configuration of the trick as the checkpointed run.",
            )
        before = checkpoint.get(CONFIGURATION_KEY, {}).get(self.state_key)
        if before is not None:
            self._compare_configuration(before)

    def _compare_configuration(self, before: Mapping[str, str]) -> None:
        now = self.configuration()
        changed = {k: (before[k], now[k]) for k in now if k in before and before[k] != now[k]}
        refused = {k: v for k, v in changed.items() if k not in self.resume_may_change}
        if refused:
            self._refuse(
                "the checkpoint was written with another configuration: "
                + ", ".join(
                    f"{k}={old} (checkpoint) vs {k}={new} (now)"
                    for k, (old, new) in refused.items()
                )
                + ". Resuming would mix the two.",
                "Resume with the checkpoint's values, or start a new run without ckpt_path.",
            )
        if changed:
            warnings.warn(
                f"{type(self).__name__}: resuming with "
                + ", ".join(f"{k}={new} (checkpoint: {old})" for k, (old, new) in changed.items())
                + "; the new value applies from here on.",
                TrickWarning,
                stacklevel=2,
            )

    def log_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, metrics: Mapping[str, Any]
    ) -> None:
        """Log ``metrics`` for this step when the Trainer's ``log_every_n_steps`` says so.

        The one logging rule of every trick (see
        :func:`~lightning_dnn_tricks.callbacks._lightning.should_log`): compute a metric only
        when :meth:`logging_now` is true, then pass it here.
        """
        if not should_log(trainer):
            return
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False)

    def stepping_tensors(
        self, optimizer: torch.optim.Optimizer, tensors: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Those of ``tensors`` that ``optimizer`` (the one stepping now) updates and trains.

        A trick acts on the optimizer that is stepping (``on_before_optimizer_step`` receives
        it), so that with several optimizers each tensor is edited once per its own step. The
        ownership is cached until the optimizer's param groups change (``BackboneFinetuning``
        adds groups while training); frozen tensors are left out at every call.
        """
        return [t for t, _ in self._owned(optimizer, tensors) if t.requires_grad]

    def stepping_lrs(
        self, optimizer: torch.optim.Optimizer, tensors: Sequence[torch.Tensor]
    ) -> list[float]:
        """The current ``lr`` of each tensor of :meth:`stepping_tensors`, in the same order."""
        groups = optimizer.param_groups
        return [
            float(groups[i]["lr"]) for t, i in self._owned(optimizer, tensors) if t.requires_grad
        ]

    def _owned(
        self, optimizer: torch.optim.Optimizer, tensors: Sequence[torch.Tensor]
    ) -> list[tuple[torch.Tensor, int]]:
        """``(tensor, param group index)`` of those of ``tensors`` that ``optimizer`` holds,
        cached until its param groups change."""
        cache: dict[tuple[int, int, int], list[tuple[torch.Tensor, int]]]
        cache = self.__dict__.setdefault("_stepping_cache", {})
        size = sum(len(group["params"]) for group in optimizer.param_groups)
        key = (id(optimizer), id(tensors), size)
        owned = cache.get(key)
        if owned is None:
            index = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
            owned = cache[key] = [(t, index[id(t)]) for t in tensors if id(t) in index]
        return owned

    @staticmethod
    def logging_now(trainer: pl.Trainer) -> bool:
        """Whether this step's metrics reach the loggers (the Trainer's ``log_every_n_steps``)."""
        return should_log(trainer)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_trainer(trainer, pl_module)
            self.check_company(trainer)

    def check_company(self, trainer: pl.Trainer) -> None:
        """Raise when another callback of the Trainer does not compose with this trick.

        The rules are decided from declared effects (:mod:`lightning_dnn_tricks.composition`).
        """
        mine = trick_party(self.spec)
        for other in trainer.callbacks:  # type: ignore[attr-defined]
            if other is self:
                continue
            party = callback_party(other)
            message = None if party is None else conflict(mine, party)
            if message is not None:
                raise TrickConfigurationError(message)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check_optimizers(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        finish_restarted_epoch(trainer)

    def _refuse(self, conflict: str, fix: str) -> NoReturn:
        raise TrickConfigurationError(f"{type(self).__name__}: {conflict} {fix}")

    def check_trainer(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Raise when the Trainer's precision, strategy or loop settings are unsupported."""
        caps = self.spec.capabilities
        precision = str(trainer.precision)
        if precision not in caps.precisions:
            self._refuse(
                f"precision={precision!r} is not supported.",
                f"Use one of {', '.join(repr(p) for p in caps.precisions)}.",
            )
        strategy = strategy_name(trainer.strategy)
        if strategy not in caps.strategies:
            self._refuse(
                f"the {strategy!r} strategy is not supported.",
                f"Use one of {', '.join(repr(s) for s in caps.strategies)}.",
            )
        if trainer.accumulate_grad_batches > 1 and not caps.gradient_accumulation:
            self._refuse(
                f"accumulate_grad_batches={trainer.accumulate_grad_batches} is not supported.",
                "Set accumulate_grad_batches=1 and raise the batch size instead.",
            )
        if not pl_module.automatic_optimization and not caps.manual_optimization:
            self._refuse(
                "manual optimisation (automatic_optimization=False) is not supported.",
                "Use automatic optimisation.",
            )

    def check_optimizers(self, trainer: pl.Trainer) -> None:
        """Raise when the module configured more optimizers than the trick supports."""
        limit = self.spec.capabilities.max_optimizers
        count = len(trainer.optimizers)
        if limit is not None and count > limit:
            self._refuse(
                f"{count} optimizers are configured but at most {limit} is supported.",
                "Return a single optimizer from configure_optimizers.",
            )

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


def finish_restarted_epoch(trainer: pl.Trainer) -> None:
    """End at once an epoch that Lightning restarts although the checkpoint finished it.

    Lightning 2.6 restarts the finished epoch when iteration-based training (``max_steps``)
    resumes from a checkpoint written at an epoch's end, and would train one batch more: the
    library's resumable loaders and samplers (``finish_restored_epoch``) then serve nothing for
    it. Lightning also counts that epoch twice, so a ``max_epochs`` set as well stops the run one
    epoch early: that is warned about. Every trick callback calls this at ``on_train_start``.
    """
    if not restarted_into_finished_epoch(trainer):
        return
    if trainer.max_epochs not in (None, -1):
        warnings.warn(
            "lightning_dnn_tricks: Lightning restarts the epoch this checkpoint finished "
            "(max_steps is set and the checkpoint was written at an epoch's end) and counts "
            f"it twice, so max_epochs={trainer.max_epochs} stops this run one epoch early. "
            "Resume with max_epochs=-1 (max_steps ends the run), or write step checkpoints "
            "(ModelCheckpoint(every_n_train_steps=...)).",
            TrickWarning,
            stacklevel=2,
        )
    combined, _ = training_loader_slots(trainer)
    for loader in getattr(combined, "flattened", []):
        batch_sampler = getattr(loader, "batch_sampler", None)
        for part in (
            loader,
            getattr(loader, "sampler", None),
            batch_sampler,
            getattr(batch_sampler, "sampler", None),
        ):
            finish = getattr(part, "finish_restored_epoch", None)
            if callable(finish):
                finish()


def _normalised(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value


def _describe(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_describe(v) for v in value) + "]"
    if isinstance(value, type) or callable(value):
        return getattr(value, "__qualname__", type(value).__qualname__)
    return repr(value)


def callback_party(callback: Callback) -> Party | None:
    """The composition party of a callback: a trick, one of Lightning's declared callbacks, or
    ``None`` for a callback that declares nothing."""
    if isinstance(callback, TrickCallback):
        return trick_party(callback.spec)
    for name in BUILTIN_CALLBACKS:
        if isinstance(callback, _builtin_class(name)):
            return builtin_party(name)
    return None


def _builtin_class(name: str) -> type:
    if name == "EMAWeightAveraging":  # its base WeightAveraging averages the same way
        name = "WeightAveraging"
    cls: type = getattr(lightning_callbacks, name, _Absent)  # absent from older Lightning
    return cls


class _Absent:
    """Stands for a Lightning callback class that the installed Lightning does not have."""
