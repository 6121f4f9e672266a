"""Lightning adapter for iterative magnitude pruning: rounds as epoch ranges inside one fit."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from lightning_dnn_tricks.callbacks import _rewind
from lightning_dnn_tricks.callbacks._lightning import (
    AverageUpdateHook,
    averaged_module,
    averaging_callbacks,
)
from lightning_dnn_tricks.callbacks.base import TrickCallback, callback_party
from lightning_dnn_tricks.functional.pruning import (
    SCOPES,
    Scope,
    apply_masks_,
    apply_masks_everywhere_,
    as_multipliers,
    magnitude_masks,
    mask_gradients_,
    pruned_state_dict,
    sparsity_report,
    target_sparsity,
)
from lightning_dnn_tricks.nn.selection import WEIGHT_LAYER_TYPES, check_pattern
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick
from lightning_dnn_tricks.validation import (
    TrickWarning,
    check_bool,
    check_choice,
    check_number,
    check_text,
)

Rewind = Literal["lr", "weights", "init", "finetune"]
REWINDS: tuple[Rewind, ...] = ("lr", "weights", "init", "finetune")

PRUNING_CAPABILITIES = Capabilities(
    max_optimizers=1,
    effects=frozenset({"masks_weights", "rewinds_schedule", "needs_every_epoch"}),
)

IMP_SPEC = register_trick(
    TrickSpec(
        name="iterative_pruning",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.pruning:IterativeMagnitudePruning",
        summary="Iterative magnitude pruning in one fit, rewinding lr, weights or to init.",
        paper="Frankle & Carbin 2019; Renda, Frankle & Carbin 2020 (learning-rate rewinding)",
        capabilities=PRUNING_CAPABILITIES,
        docs_page="methods/pruning.md",
    )
)


class IterativeMagnitudePruning(TrickCallback):
    """Iterative magnitude pruning (IMP) with rewinding, as epoch ranges of one ``Trainer.fit``.

    Round 0 trains the dense model for ``epochs_per_round`` epochs. Each of the ``rounds`` pruning
    rounds then removes ``amount`` of the surviving selected weights by magnitude (over all layers
    at once or per layer), rewinds, and retrains for ``epochs_per_round`` epochs. After round
    ``r`` the sparsity of the selection is ``1 - (1 - amount)^r``; the run lasts
    ``(rounds + 1) * epochs_per_round`` epochs (``max_epochs`` must equal it, or be ``-1`` to have
    it set). Rewinding modes:

    - ``"lr"`` (learning-rate rewinding, Renda et al.): keep the weights, replay the LR schedule
      from its start (optimizer hyperparameters and scheduler state as at epoch 0);
    - ``"weights"`` (late rewinding, Frankle et al.): survivors back to their values at
      ``rewind_step``/``rewind_epoch``, schedule as it was then;
    - ``"init"`` (lottery ticket, Frankle & Carbin): survivors back to their initial values,
      schedule from the start;
    - ``"finetune"``: keep the weights and the final learning rate of round 0.

    All modes but ``"finetune"`` also clear the optimizer state. Masks hold on every step: masked
    gradients are zeroed in ``on_before_optimizer_step``, and an optimizer step post-hook re-zeroes
    the masked weights. The masked momentum/moments are cleared whenever the masks change (each
    round and at fit start; checkpoints hold them as zeros); with zero gradients and zero weights
    they stay zero under SGD, momentum, Adam(W) and their weight decay, so they are not re-masked
    every step. Masks, snapshots and the round position are in the checkpoint, so a run resumed
    with ``ckpt_path`` continues the same round, same masks.

    Args:
        amount: fraction of the surviving selected weights pruned each round, in (0, 1).
        rounds: number of pruning rounds (>= 1).
        epochs_per_round: training epochs of round 0 and of each retraining (>= 1).
        scope: ``"global"`` ranks all selected weights together, ``"layerwise"`` each layer alone.
        rewind: ``"lr"``, ``"weights"``, ``"init"`` or ``"finetune"`` (see above).
        rewind_epoch: with ``rewind="weights"``: the epoch whose start is the rewind point.
        rewind_step: with ``rewind="weights"``: the optimizer step that is the rewind point.
        layer_types: module classes whose ``weight`` is pruned (``isinstance``; conv and linear).
        include: regular expression on module names; only matching modules are pruned.
        exclude: regular expression on module names to leave unpruned.
        exclude_classifier: leave the final classifier layer unpruned.
        monitor: metric recorded at the end of each round (``history``) and logged as
            ``pruning/round_<monitor>``, when the run logs it; ``None`` to skip.
        export_path: save the permanently pruned ``state_dict`` (plain tensors) to this file at
            the end (rank 0; not under ``fast_dev_run``). A relative path is resolved against
            the run's log directory, ``trainer.log_dir`` (``lightning_logs/version_N/`` with
            the default logger, ``default_root_dir`` without one), so each run writes its own;
            the file written is printed (see :meth:`export_file`).
        export_submodule: dotted attribute of the LightningModule to export instead of the whole
            module, e.g. ``"model"`` for the timm network of ``TimmClassifier``.
        verbose: print the round, sparsity and epochs left at every round.

    Raises:
        ValueError: an argument is out of range or does not fit the rewinding mode (the message
            names it).
        TrickConfigurationError: at ``setup``, ``max_epochs`` does not fit the schedule, or the
            export cannot be written (a directory, an unwritable place, an unknown
            ``export_submodule``); at resume,
            the checkpoint was written with other values of the schedule arguments (``amount``,
            ``rounds``, ``epochs_per_round``, ``scope``, ``rewind``, ``rewind_epoch``,
            ``rewind_step``) or of the layer selection. A change of ``monitor``,
            ``export_path``, ``export_submodule`` or ``verbose`` is accepted with a warning.
            A ``max_steps`` that ends the run before the schedule does is warned about at
            ``on_train_start``, naming the round and sparsity the run will reach.

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_dnn_tricks.callbacks import IterativeMagnitudePruning
        >>> imp = IterativeMagnitudePruning(amount=0.2, rounds=10, epochs_per_round=5)
        >>> trainer = pl.Trainer(max_epochs=imp.total_epochs, callbacks=[imp], logger=False)

    Note:
        Pruning happens at the start of the first epoch of the next round, after the previous
        epoch's scheduler step. ``"weights"`` and ``"init"`` restore the whole ``state_dict``
        (biases and normalisation buffers too), as Frankle et al. rewind all parameters. Biases
        and normalisation parameters are never pruned.
    """

    spec = IMP_SPEC
    identity_arguments = ("layer_types", "include", "exclude", "exclude_classifier")
    resume_may_change = ("monitor", "export_path", "export_submodule", "verbose")

    def __init__(
        self,
        amount: float = 0.2,
        rounds: int = 10,
        epochs_per_round: int = 10,
        scope: Scope = "global",
        rewind: Rewind = "lr",
        rewind_epoch: int | None = None,
        rewind_step: int | None = None,
        layer_types: Sequence[type[nn.Module]] = WEIGHT_LAYER_TYPES,
        include: str | None = None,
        exclude: str | None = None,
        exclude_classifier: bool = False,
        monitor: str | None = "val/acc",
        export_path: str | None = None,
        export_submodule: str | None = None,
        verbose: bool = True,
    ) -> None:
        check_number("amount", amount, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False)
        check_number("rounds", rounds, low=1, integer=True)
        check_number("epochs_per_round", epochs_per_round, low=1, integer=True)
        check_choice("scope", scope, SCOPES)
        check_choice("rewind", rewind, REWINDS)
        check_pattern("include", include)
        check_pattern("exclude", exclude)
        check_bool("exclude_classifier", exclude_classifier)
        check_bool("verbose", verbose)
        for name, text in (
            ("monitor", monitor),
            ("export_path", export_path),
            ("export_submodule", export_submodule),
        ):
            check_text(name, text)
        _rewind.check_layer_types(layer_types)
        for name, value in (("rewind_epoch", rewind_epoch), ("rewind_step", rewind_step)):
            if value is not None:
                check_number(name, value, low=0, integer=True)
                if rewind != "weights":
                    raise ValueError(f"`{name}` needs rewind='weights', got rewind={rewind!r}.")
        if rewind == "weights" and (rewind_epoch is None) == (rewind_step is None):
            raise ValueError("rewind='weights' needs exactly one of `rewind_epoch`, `rewind_step`.")
        self.amount = float(amount)
        self.rounds = rounds
        self.epochs_per_round = epochs_per_round
        self.scope: Scope = scope
        self.rewind: Rewind = rewind
        self.rewind_epoch = rewind_epoch
        self.rewind_step = rewind_step
        self.layer_types = tuple(layer_types)
        self.include = include
        self.exclude = exclude
        self.exclude_classifier = exclude_classifier
        self.monitor = monitor
        self.export_path = export_path
        self.export_submodule = export_submodule
        self._export_file: Path | None = None
        self.verbose = verbose
        if rewind_epoch is not None and rewind_epoch >= self.round_epochs(0):
            raise ValueError(
                f"`rewind_epoch` must fall inside round 0 (< {self.round_epochs(0)} epochs), "
                f"got {rewind_epoch}."
            )
        self.history: list[dict[str, Any]] = []
        self._names: list[str] = []
        self._params: list[nn.Parameter] = []
        self._masks: list[Tensor] = []
        self._multipliers: list[Tensor] = []
        self._handles: list[RemovableHandle] = []
        self._average_hooks: list[AverageUpdateHook] = []
        self._optimizers: list[torch.optim.Optimizer] = []
        self._mask_state_each_step = False
        self._loaded: dict[str, Any] | None = None
        self._reset_progress()

    def _reset_progress(self) -> None:
        self._round = 0
        self._round_start = 0
        self._handled_epoch = -1
        self._snapshot: dict[str, Any] | None = None
        self._finetune_lrs: list[list[float]] | None = None
        self._sparsity = 0.0

    # ------------------------------------------------------------------ schedule
    def round_epochs(self, index: int) -> int:
        """Epochs of round ``index`` (0: dense training, ``rounds``: the last retraining)."""
        return self.epochs_per_round

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole schedule: the ``max_epochs`` the Trainer needs."""
        return sum(self.round_epochs(index) for index in range(self.rounds + 1))

    def sparsity_after(self, index: int) -> float:
        """Target sparsity of the selection after ``index`` pruning rounds."""
        return target_sparsity([self.amount] * index)

    def _check_schedule(self, trainer: pl.Trainer) -> None:
        total = self.total_epochs
        max_epochs = trainer.max_epochs
        if getattr(trainer, "fast_dev_run", False):
            return  # a smoke run of a few batches: the schedule is not meant to finish
        if (max_epochs is None or max_epochs == -1) and trainer.max_steps != -1:
            return  # the schedule stops the run; max_steps is checked at train start
        if max_epochs is None or max_epochs == -1:
            trainer.fit_loop.max_epochs = total
            rank_zero_info(f"{type(self).__name__}: max_epochs set to {total} from the schedule.")
        elif max_epochs != total:
            self._refuse(
                f"max_epochs={max_epochs} does not fit the schedule: {self.rounds + 1} rounds "
                f"({self._describe_rounds()}) take {total} epochs.",
                f"Set max_epochs={total} (or -1 to have it set).",
            )

    def _check_max_steps(self, trainer: pl.Trainer, steps_per_epoch: int) -> None:
        """Warn when ``max_steps`` ends the run before the schedule's last round.

        A warning, not a refusal: a short smoke run is legitimate, as long as it says which
        round it reaches.
        """
        if trainer.max_steps == -1 or getattr(trainer, "fast_dev_run", False):
            return
        needed = self.total_epochs * steps_per_epoch
        if trainer.max_steps >= needed:
            return
        reached, start = 0, 0  # a round starts with the first step of its first epoch
        while (
            reached < self.rounds
            and (start + self.round_epochs(reached)) * steps_per_epoch < trainer.max_steps
        ):
            start += self.round_epochs(reached)
            reached += 1
        warnings.warn(
            f"{type(self).__name__}: max_steps={trainer.max_steps} ends the run before the "
            f"schedule does: {self.rounds + 1} rounds ({self._describe_rounds()}) of "
            f"{steps_per_epoch} optimizer steps per epoch take {needed} steps. This run stops "
            f"in round {reached} of {self.rounds}, at sparsity {self.sparsity_after(reached):.4f}"
            f" instead of {self.sparsity_after(self.rounds):.4f}. Set max_steps=-1 (the schedule "
            f"stops the run) or max_steps>={needed}, or shorten the schedule.",
            TrickWarning,
            stacklevel=2,
        )

    def _describe_rounds(self) -> str:
        return f"{self.epochs_per_round} epochs each"

    # ------------------------------------------------------------------ selection and state
    def select_weights(self, model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
        """Qualified names and tensors of the weights pruned in ``model``."""
        return _rewind.select_weights(
            model, self.layer_types, self.include, self.exclude, self.exclude_classifier
        )

    @property
    def masks(self) -> dict[str, Tensor]:
        """The current boolean masks by parameter name (``True``: the weight survives)."""
        return dict(zip(self._names, self._masks, strict=True))

    def _set_masks(self, masks: Sequence[Tensor]) -> None:
        self._masks = [m.to(p.device, torch.bool) for m, p in zip(masks, self._params, strict=True)]
        self._multipliers = as_multipliers(self._masks, self._params)
        self._sparsity = sparsity_report(self.masks).sparsity

    def state_dict(self) -> dict[str, Any]:
        return {
            "round": self._round,
            "round_start": self._round_start,
            "handled_epoch": self._handled_epoch,
            "masks": {name: mask.cpu() for name, mask in self.masks.items()},
            "snapshot": self._snapshot,
            "finetune_lrs": self._finetune_lrs,
            "history": list(self.history),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = dict(state_dict)
        self._round = state_dict["round"]
        self._round_start = state_dict["round_start"]
        self._handled_epoch = state_dict["handled_epoch"]
        self._snapshot = state_dict["snapshot"]
        self._finetune_lrs = state_dict["finetune_lrs"]
        self.history = list(state_dict["history"])

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if stage == "fit":
            self._check_schedule(trainer)
            self._export_file = self.export_file(trainer)
            self._check_export(pl_module)

    def export_file(self, trainer: pl.Trainer) -> Path | None:
        """The file the export goes to: ``export_path`` when it is absolute, else that path
        under ``trainer.log_dir`` (its ``default_root_dir`` when the logger has no directory);
        ``None`` without ``export_path``. Called on every rank at ``setup``, as
        ``trainer.log_dir`` requires."""
        if self.export_path is None:
            return None
        path = Path(self.export_path).expanduser()
        if path.is_absolute():
            return path
        root = trainer.log_dir
        return Path(root if root is not None else trainer.default_root_dir) / path

    def _check_export(self, pl_module: pl.LightningModule) -> None:
        """Refuse an export that could only fail after the whole schedule has trained."""
        if self.export_submodule is not None:
            try:
                pl_module.get_submodule(self.export_submodule)
            except AttributeError:
                self._refuse(
                    f"export_submodule={self.export_submodule!r} is not a sub-module of "
                    f"{type(pl_module).__name__}.",
                    "Name one of its sub-modules (e.g. 'model' for TimmClassifier), or None.",
                )
        if self.export_path is None:
            return
        path = self._export_file or Path(self.export_path)
        if path.is_dir() or Path(self.export_path).name in ("", ".."):
            self._refuse(
                f"export_path={self.export_path!r} is a directory ({path}).",
                "Give a file name, e.g. 'pruned.pt' inside it.",
            )
        existing = next(parent for parent in path.absolute().parents if parent.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK):
            self._refuse(
                f"export_path={self.export_path!r} cannot be written: {existing} is not a "
                "writable directory.",
                "Choose a path in a writable directory.",
            )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        if self._loaded is None:
            self._reset_progress()
            self.history = []
        self._names, self._params = self.select_weights(pl_module)
        if not self._params:
            warnings.warn(
                f"{type(self).__name__} matched no layer: nothing will be pruned. Check "
                "`layer_types`, `include` and `exclude`.",
                TrickWarning,
                stacklevel=2,
            )
        saved = (self._loaded or {}).get("masks")
        if saved is not None:
            if list(saved) != self._names:
                self._refuse(
                    "the checkpoint's masks are for other parameters "
                    f"({len(saved)} saved, {len(self._names)} selected now).",
                    "Resume with the same model and the same layer selection.",
                )
            self._set_masks(list(saved.values()))
        else:
            self._set_masks([torch.ones_like(p, dtype=torch.bool) for p in self._params])
        self._loaded = None
        self._handles = [
            optimizer.register_step_post_hook(self._after_step) for optimizer in trainer.optimizers
        ]
        self._optimizers = list(trainer.optimizers)
        # Another trick adding dense gradients (WNS penalty) after the masking would put
        # momentum back at pruned entries: then the optimizer state is re-masked every step.
        self._mask_state_each_step = any(
            party is not None and "edits_gradients_dense" in party.effects
            for party in map(callback_party, trainer.callbacks)  # type: ignore[attr-defined]
        )
        apply_masks_everywhere_(self._params, self._multipliers, trainer.optimizers)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        # Averaged weights (EMA, SWA) keep the masks: re-masked after every update of theirs.
        self._average_hooks = [
            AverageUpdateHook(callback, after_update=lambda _, average: self._mask_average(average))
            for callback in averaging_callbacks(trainer)
        ]
        self._mask_averages(trainer)
        batches = trainer.num_training_batches
        if not isinstance(batches, int) or math.isinf(batches):
            return
        steps_per_epoch = math.ceil(batches / trainer.accumulate_grad_batches)
        self._check_max_steps(trainer, steps_per_epoch)
        if self.rewind_step is None:
            return
        steps = self.round_epochs(0) * steps_per_epoch
        if self.rewind_step >= steps:
            self._refuse(
                f"rewind_step={self.rewind_step} is not inside round 0 ({steps} optimizer steps).",
                f"Choose a rewind_step below {steps}, or use rewind_epoch.",
            )

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        for hook in self._average_hooks:
            hook.remove()
        self._handles, self._average_hooks, self._optimizers = [], [], []

    def _mask_averages(self, trainer: pl.Trainer) -> None:
        for callback in averaging_callbacks(trainer):
            average = averaged_module(callback)
            if average is not None:
                self._mask_average(average)

    def _mask_average(self, average: nn.Module) -> None:
        """Zero the pruned entries of an averaged copy of the module (same parameter names)."""
        tensors = dict(average.named_parameters())
        pairs = [
            (tensors[n], m)
            for n, m in zip(self._names, self._multipliers, strict=True)
            if n in tensors
        ]
        apply_masks_([t.data for t, _ in pairs], [m.to(t.device) for t, m in pairs])

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Lightning skips on_train_epoch_start for the epoch it restarts into after a checkpoint
        # written on an epoch's last batch: the epoch's work is derived from the saved state.
        self._start_epoch(trainer, pl_module)
        pending = self.rewind_step is not None and self._snapshot is None
        if pending and trainer.global_step == self.rewind_step:
            self._take_snapshot(trainer, pl_module)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        mask_gradients_(self._params, self._multipliers)
        if self._finetune_lrs is not None:
            _rewind.set_learning_rates(trainer, self._finetune_lrs)

    def _after_step(self, optimizer: torch.optim.Optimizer, *args: Any) -> None:
        if self._mask_state_each_step:
            apply_masks_everywhere_(self._params, self._multipliers, self._optimizers)
        else:  # the state was cleared with the masks, and masked gradients keep it at zero
            apply_masks_(self._params, self._multipliers)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start_epoch(trainer, pl_module)

    def _start_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The work of the current epoch's start (snapshot, next round), once per epoch."""
        epoch = trainer.current_epoch
        if epoch <= self._handled_epoch:  # done already, or the same epoch resumed mid-epoch
            return
        self._handled_epoch = epoch
        if epoch == 0 and self.rewind in ("lr", "init"):
            self._take_snapshot(trainer, pl_module)
        if self.rewind_epoch is not None and epoch == self.rewind_epoch:
            self._take_snapshot(trainer, pl_module)
        if self._round >= self.rounds:
            return
        elapsed = epoch - self._round_start
        if elapsed >= self.round_epochs(self._round):
            self._next_round(trainer, pl_module, epoch, self._prune(trainer))
        else:
            early = self._early_masks(trainer, elapsed)
            if early is not None:
                self._next_round(trainer, pl_module, epoch, early)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("pruning/sparsity", self._sparsity, on_step=False, on_epoch=True)
        pl_module.log("pruning/round", float(self._round), on_step=False, on_epoch=True)
        done = trainer.current_epoch + 1 - self._round_start
        if self._round == self.rounds and done >= self.round_epochs(self._round):
            trainer.should_stop = True  # the schedule is over (AIMP's adaptive stop: early)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record_round(trainer, trainer.current_epoch)
        if self.export_path is None:
            return
        target = self._export_file or Path(self.export_path)
        name = type(self).__name__
        if getattr(trainer, "fast_dev_run", False):  # a smoke run writes nothing, like Lightning
            rank_zero_info(f"{name}: fast_dev_run, {target} not written.")
        elif trainer.is_global_zero:
            replaced = " (it replaced an existing file)" if target.exists() else ""
            self.export(pl_module, target)
            rank_zero_info(f"{name}: pruned state_dict written to {target}{replaced}.")

    # ------------------------------------------------------------------ rounds
    def _early_masks(self, trainer: pl.Trainer, elapsed: int) -> list[Tensor] | None:
        """The next masks when the current round should end before its budget (AIMP)."""
        return None

    def _prune(self, trainer: pl.Trainer) -> list[Tensor]:
        masks = magnitude_masks(
            self._params,
            sparsity=self.sparsity_after(self._round + 1),
            masks=self._masks,
            scope=self.scope,
        )
        return _rewind.from_rank_zero(trainer, masks)

    def _record_round(self, trainer: pl.Trainer, epoch: int) -> None:
        if self.history and self.history[-1]["round"] == self._round:
            return
        entry: dict[str, Any] = {
            "round": self._round,
            "sparsity": self._sparsity,
            "epochs": epoch - self._round_start,
            "end_epoch": epoch,
        }
        if self.monitor:
            _rewind.record_metric(trainer, self.monitor, entry)
        self.history.append(entry)

    def _take_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._snapshot = {"schedule": _rewind.schedule_snapshot(trainer)}
        if self.rewind in ("weights", "init"):
            self._snapshot["model"] = _rewind.model_snapshot(pl_module)

    def _next_round(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        epoch: int,
        masks: list[Tensor],
    ) -> None:
        self._record_round(trainer, epoch)
        previous = self._sparsity
        if self.rewind != "finetune" and self._snapshot is None:
            self._refuse(
                f"round {self._round} ended before the rewind point "
                f"(rewind_step={self.rewind_step}) was reached.",
                "Choose a rewind_step inside round 0.",
            )
        self._round += 1
        self._round_start = epoch
        self._set_masks(masks)
        if self.rewind == "finetune":
            self._finetune_lrs = _rewind.learning_rates(trainer)
        else:
            assert self._snapshot is not None
            if "model" in self._snapshot:
                pl_module.load_state_dict(self._snapshot["model"])
            _rewind.restore_schedule(trainer, self._snapshot["schedule"])
            _rewind.reset_optimizer_state(trainer)
        apply_masks_everywhere_(self._params, self._multipliers, trainer.optimizers)
        self._mask_averages(trainer)
        if self.verbose:
            left = self.total_epochs - epoch
            rank_zero_info(
                f"{type(self).__name__}: round {self._round}/{self.rounds} starts at epoch {epoch}"
                f" (sparsity {previous:.4f} -> {self._sparsity:.4f}, rewind={self.rewind!r}); "
                f"this round trains {self.round_epochs(self._round)} epoch(s); at most {left} "
                "epoch(s) left."
            )

    # ------------------------------------------------------------------ export
    def export(self, pl_module: pl.LightningModule, path: str | Path) -> None:
        """Save the pruned ``state_dict`` (plain CPU tensors, zeros where pruned) to ``path``."""
        state = pruned_state_dict(pl_module, self.masks, self.export_submodule)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
