"""Lightning adapter for adaptive importance sampling: scores after each batch, sampler refresh."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sized
from typing import Any, cast

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from lightning_dnn_tricks.callbacks._lightning import training_loader_slots
from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.data.importance_samplers import AdaptiveImportanceSampler
from lightning_dnn_tricks.data.indexed import (
    ImportanceCollate,
    IndexedDataset,
    find_importance_sampler,
    importance_loader_like,
    importance_sampler,
    rebuild_problem,
)
from lightning_dnn_tricks.functional.importance_sampling import (
    EXAMPLE_KEY,
    INDEX_KEY,
    RECORD_APPLIED,
    RECORD_KEY,
    RECORD_LOGIT_GRAD,
    RECORD_LOSS,
    SCORES,
    Score,
    ess_fraction,
    importance_probabilities,
    importance_weights,
    is_importance_batch,
    per_example_grad_norms,
)
from lightning_dnn_tricks.registry import Capabilities, TrickSpec, register_trick
from lightning_dnn_tricks.validation import TrickConfigurationError, check_choice, check_number

_log = logging.getLogger(__name__)

IMPORTANCE_SAMPLING_SPEC = register_trick(
    TrickSpec(
        name="importance_sampling",
        kind="callback",
        import_path="lightning_dnn_tricks.callbacks.importance_sampling:AdaptiveImportanceSampling",
        summary="Draw training examples by recent gradient-norm scores, with unbiasing weights.",
        paper="Liu, Wang, Li, So, Low-Cost Lipschitz-Independent Adaptive Importance Sampling "
        "of Stochastic Gradients, ICPR 2020",
        capabilities=Capabilities(
            manual_optimization=True, effects=frozenset({"changes_data", "changes_loss"})
        ),
        reconstruction=True,
        docs_page="methods/importance_sampling.md",
    )
)

_HOW_TO_APPLY = (
    "Compute the training loss with lightning_dnn_tricks.functional.importance_weighted_mean("
    "per_example_losses, batch, logits=logits, targets=targets) on the batch's "
    'batch["example"] (the reference modules TimmClassifier and SequenceModel do).'
)

_BATCH_CONTRACT = (
    "the training batch is now an importance batch, the dict "
    '{"example": <the usual batch>, "index", "weight", "record"}: read the usual batch from '
    'batch["example"] (x, y = batch["example"]).'
)

#: What a module that reads an importance batch as its usual batch raises (``x, y = batch``:
#: ValueError; ``batch[0]``: KeyError; ``self(batch)``: TypeError or AttributeError).
_BATCH_MISUSE = (TypeError, ValueError, KeyError, IndexError, AttributeError)

_REBUILD_FIX = "Build it with lightning_dnn_tricks.data.importance_dataloader(dataset, ...)."


def add_note(
    exception: BaseException, note: str, *, notes: bool = sys.version_info >= (3, 11)
) -> None:
    """Add ``note`` to ``exception`` as it propagates (PEP 678 ``add_note`` on Python 3.11+).

    On 3.10 (``notes=False``) the note goes to ``__notes__`` (read by pytest and the
    ``exceptiongroup`` backport) and, for an exception whose text is its one string argument,
    into that argument, so that the printed traceback shows it; otherwise it is logged.
    """
    if notes:
        cast(Any, exception).add_note(note)
        return
    cast(Any, exception).__notes__ = [*getattr(exception, "__notes__", []), note]
    args = exception.args
    plain_text = type(exception).__str__ is BaseException.__str__
    if plain_text and len(args) == 1 and isinstance(args[0], str):
        exception.args = (f"{args[0]}\n{note}",)
    else:
        _log.error(note)


class AdaptiveImportanceSampling(TrickCallback):
    """Adaptive importance sampling (Liu et al., ICPR 2020; schedule: our reconstruction).

    Keeps one score ``G_i`` per training example (initially ``initial_score``), updated after each
    training batch with the batch's per-example scores (all-gathered with their dataset indices
    under DDP). Every ``refresh_every`` training batches, or at the end of every epoch when it is
    ``None``, the sampler draws from ``p_i = (1 - theta) G_i / sum G + theta / n``; each drawn
    example's loss is weighted by ``w_i = 1 / (n p_i)``, which keeps the gradient an unbiased
    estimate of the full-data gradient (``w_i <= 1 / theta``).

    Data: at ``on_train_start`` a plain training ``DataLoader`` (``shuffle=False``/``True``, or
    Lightning's ``DistributedSampler`` in their place under DDP) is rebuilt around an
    :class:`~lightning_dnn_tricks.data.AdaptiveImportanceSampler` (same dataset, batch size,
    collate function, workers and number of batches; under DDP the distributed variant, one
    seeded draw split across ranks), unless it already draws with one (built with
    :func:`~lightning_dnn_tricks.data.importance_dataloader`). A loader with a sampler or batch
    sampler of its own (``WeightedRandomSampler``, ``SubsetRandomSampler``, a custom
    ``batch_sampler``) is refused, never silently replaced. Batches become importance batches:
    ``{"example": <the usual batch>, "index", "weight", "record"}``.

    Loss: the module must read its usual batch from ``batch["example"]`` and compute its training
    loss with :func:`~lightning_dnn_tricks.functional.importance_weighted_mean`, which applies the
    weights and records the scores. A training batch whose weights were not applied raises
    :class:`~lightning_dnn_tricks.TrickConfigurationError` at the end of that (first) step; a
    first training step that fails reading the batch as before (``x, y = batch``) gets a note
    that says so added to its exception.

    Logs ``importance/ess`` (effective sample size per draw, ``n^2 / sum_i 1/p_i``, 1 when
    uniform) and ``importance/max_weight`` (``1 / (n min p)``) at the Trainer's
    ``log_every_n_steps``.

    Args:
        theta: mixing weight of the uniform distribution, in (0, 1].
        refresh_every: refresh the distribution every this many training batches (>= 1);
            ``None``: once per epoch, at its end.
        score: per-example score ``G_i``: ``"logit_grad"`` (``||softmax(z) - onehot(y)||``, the
            exact gradient norm w.r.t. the logits), ``"loss"``, or ``"grad_norm"`` (exact
            per-example parameter-gradient norm through ``torch.func``, with the module in eval
            mode and a cross-entropy loss on ``pl_module(x)``; expensive, for checking proxies).
        initial_score: the score of examples not yet seen (> 0).
        seed: seed of the sampler built here (>= 0; the same on every rank).
        grad_norm_chunk_size: examples per vectorised chunk for ``"grad_norm"`` (>= 1).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TrickConfigurationError: at ``setup``, a second ``AdaptiveImportanceSampling`` in the
            Trainer; at ``on_train_start``, a training loader with a sampler or batch sampler of
            its own, one that is not a single map-style ``DataLoader`` with a ``batch_size``, or
            one that builds importance batches without an importance sampler; during training,
            a step that did not apply the weights, a batch transformed away from an importance
            batch, or ``score="logit_grad"`` without logits; at resume, a checkpoint written with
            another ``theta``, ``refresh_every``, ``score``, ``initial_score`` or ``seed`` (a
            change of ``grad_norm_chunk_size`` is accepted with a warning).

    Examples:
        >>> import lightning.pytorch as pl
        >>> from lightning_dnn_tricks.callbacks import AdaptiveImportanceSampling
        >>> trainer = pl.Trainer(
        ...     callbacks=[AdaptiveImportanceSampling(theta=0.3)], log_every_n_steps=10
        ... )

        and in the module, ``x, y = batch["example"]`` and
        ``loss = importance_weighted_mean(F.cross_entropy(logits, y, reduction="none"), batch,
        logits=logits, targets=y)``.

    Note:
        Our reconstruction (the paper's body was not available): the scores, the uniform mixing
        with ``theta = 0.3``, the per-epoch default refresh and the score proxies. The identity
        that makes the weighted gradient unbiased is not in doubt. With ``num_workers > 0`` a
        refresh reaches the batches a few batches later (the loader draws ahead) and resume is
        exact only with ``num_workers=0``.
    """

    spec = IMPORTANCE_SAMPLING_SPEC
    resume_may_change = ("grad_norm_chunk_size",)

    def __init__(
        self,
        theta: float = 0.3,
        refresh_every: int | None = None,
        score: Score = "logit_grad",
        initial_score: float = 1.0,
        seed: int = 0,
        grad_norm_chunk_size: int = 16,
    ) -> None:
        check_number("theta", theta, low=0.0, high=1.0, low_inclusive=False)
        if refresh_every is not None:
            check_number("refresh_every", refresh_every, low=1, integer=True)
        check_choice("score", score, SCORES)
        check_number("initial_score", initial_score, low=0.0, low_inclusive=False)
        check_number("seed", seed, low=0, integer=True)
        check_number("grad_norm_chunk_size", grad_norm_chunk_size, low=1, integer=True)
        self.theta = float(theta)
        self.refresh_every = refresh_every
        self.score: Score = score
        self.initial_score = float(initial_score)
        self.seed = seed
        self.grad_norm_chunk_size = grad_norm_chunk_size
        self.scores: torch.Tensor | None = None
        self.sampler: AdaptiveImportanceSampler | None = None
        self._batches_seen = 0
        self._refreshed_epoch = -1  # the last epoch whose end-of-epoch refresh has run
        self._pending: dict[str, Any] | None = None
        self._grad_norms: torch.Tensor | None = None
        self._metrics: dict[str, float] | None = None
        self._first_step_pending = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Before the base class's composition check, whose "changes_data" rule refuses the pair
        # too, in general words.
        callbacks = trainer.callbacks  # type: ignore[attr-defined]
        alike = [cb for cb in callbacks if isinstance(cb, AdaptiveImportanceSampling)]
        if stage == "fit" and len(alike) > 1:
            self._refuse(
                f"the Trainer has {len(alike)} importance sampling callbacks "
                f"({', '.join(type(cb).__name__ for cb in alike)}): each would rebuild the "
                "training loader around a sampler of its own, and only one draw can reach the "
                "batches.",
                "Keep one AdaptiveImportanceSampling callback.",
            )
        super().setup(trainer, pl_module, stage)

    # ------------------------------------------------------------------ data
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(trainer)
        super().on_train_start(trainer, pl_module)  # after the sampler's state is restored
        self._first_step_pending = True

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Tell a module that failed on its first importance batch what the batch now is."""
        if not self._first_step_pending:
            return
        self._first_step_pending = False
        if isinstance(exception, TrickConfigurationError) or not isinstance(
            exception, _BATCH_MISUSE
        ):
            return
        add_note(
            exception,
            f"{type(self).__name__}: the first training step of {type(pl_module).__name__} "
            f"failed before any importance batch completed. With {type(self).__name__}, "
            f"{_BATCH_CONTRACT} {_HOW_TO_APPLY}",
        )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_step_pending = False

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._attach(trainer)  # a reloaded training loader (reload_dataloaders_every_n_epochs)

    def _attach(self, trainer: pl.Trainer) -> None:
        loader = trainer.train_dataloader
        if not isinstance(loader, DataLoader):
            self._refuse(
                f"the training data must be one map-style DataLoader, got {type(loader).__name__}.",
                "Return a single DataLoader from train_dataloader().",
            )
        sampler = find_importance_sampler(loader)
        if sampler is None:
            problem = rebuild_problem(loader)
            if problem is not None:
                self._refuse(*problem)
            sampler = self._install(trainer, loader)
        elif not isinstance(loader.dataset, IndexedDataset) or not isinstance(
            loader.collate_fn, ImportanceCollate
        ):
            self._refuse(
                "the training loader draws with an AdaptiveImportanceSampler but does not build "
                "importance batches.",
                _REBUILD_FIX,
            )
        sampler.set_epoch(trainer.current_epoch)
        self.sampler = sampler
        if self.scores is None or self.scores.numel() != sampler.num_examples:
            self.scores = torch.full((sampler.num_examples,), self.initial_score)
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self.scores = pending["scores"].clone().float()
            self._batches_seen = pending["batches_seen"]
            self._refreshed_epoch = pending.get("refreshed_epoch", trainer.current_epoch - 1)
            sampler.load_state_dict(pending["sampler"])
            # A checkpoint written on an epoch's last batch resumes into the next epoch without
            # that epoch's end (Lightning runs no epoch-end hook for it): refresh now.
            if self.refresh_every is None and self._refreshed_epoch < trainer.current_epoch - 1:
                self.refresh()
                self._refreshed_epoch = trainer.current_epoch - 1
        self._metrics = None

    def _install(self, trainer: pl.Trainer, loader: DataLoader[Any]) -> AdaptiveImportanceSampler:
        """Rebuild the training loader around our sampler (kept across reloaded loaders)."""
        assert loader.batch_size is not None  # rebuild_problem refuses loaders without one
        sampler = loader.sampler
        num_samples = len(sampler) if isinstance(sampler, Sized) else None
        dataset = cast(Sized, loader.dataset)
        if self.sampler is None or self.sampler.num_examples != len(dataset):
            self.sampler = importance_sampler(
                dataset,
                loader.batch_size,
                num_samples=num_samples,
                seed=self.seed,
                num_replicas=trainer.world_size,
                rank=trainer.global_rank,
            )
        rebuilt = importance_loader_like(loader, self.sampler, seed=self.seed)
        # Lightning has no public way to swap the training loader once it is set up: replace it in
        # the fit loop's CombinedLoader and re-create the fetcher's iterator (made in setup_data).
        combined, fetcher = training_loader_slots(trainer)
        if (
            combined is None
            or fetcher is None
            or len(combined.flattened) != 1
            or len(rebuilt) != len(loader)
        ):
            self._refuse(
                "the training loader cannot be rebuilt around an importance sampler here.",
                _REBUILD_FIX,
            )
        combined.flattened = [rebuilt]
        iter(fetcher)
        return self.sampler

    # ------------------------------------------------------------------ scores
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.score == "grad_norm" and is_importance_batch(batch):
            x, y = batch[EXAMPLE_KEY][0], batch[EXAMPLE_KEY][1]
            self._grad_norms = per_example_grad_norms(
                pl_module, F.cross_entropy, x, y, chunk_size=self.grad_norm_chunk_size
            )

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._first_step_pending = False
        values = self._batch_scores(pl_module, batch)
        pairs = torch.stack([batch[INDEX_KEY].double(), values.double()], dim=1)
        if trainer.world_size > 1:
            # every rank's (index, score) pairs, in rank order
            pairs = cast(torch.Tensor, pl_module.all_gather(pairs))
        pairs = pairs.reshape(-1, 2).cpu()
        assert self.scores is not None
        self.scores[pairs[:, 0].long()] = pairs[:, 1].float()
        self._batches_seen += 1
        if self.refresh_every is not None and self._batches_seen % self.refresh_every == 0:
            self.refresh()
        if self.logging_now(trainer):
            self.log_metrics(trainer, pl_module, self._current_metrics())

    def _batch_scores(self, pl_module: pl.LightningModule, batch: Any) -> torch.Tensor:
        name = type(pl_module).__name__
        if not is_importance_batch(batch) or RECORD_KEY not in batch:
            self._refuse(
                f"the training batch of {name} is not an importance batch "
                '({"example", "index", "weight", "record"}).',
                "Build the training loader with lightning_dnn_tricks.data.importance_dataloader, "
                "or let this callback rebuild a plain DataLoader (do not transform the batch in "
                "on_before_batch_transfer).",
            )
        record = batch[RECORD_KEY].detach()
        if not bool((record[:, RECORD_APPLIED] == 1).all()):
            self._refuse(
                f"{name}.training_step did not apply the importance weights of the batch, so its "
                "gradient is biased towards the examples drawn most often.",
                _HOW_TO_APPLY,
            )
        if self.score == "grad_norm":
            assert self._grad_norms is not None
            return self._grad_norms.detach()
        values = record[:, RECORD_LOGIT_GRAD if self.score == "logit_grad" else RECORD_LOSS]
        if self.score == "logit_grad" and bool(torch.isnan(values).any()):
            self._refuse(
                "score='logit_grad' needs the logits and class targets: "
                f"{name} called importance_weighted_mean without logits= and targets=.",
                "Pass them, or use score='loss' (regression) or score='grad_norm'.",
            )
        return values

    def refresh(self) -> None:
        """Draw the next blocks from ``p = (1 - theta) G / sum G + theta / n``."""
        assert self.scores is not None and self.sampler is not None
        self.sampler.set_probabilities(importance_probabilities(self.scores, self.theta))
        self._metrics = None

    def _current_metrics(self) -> dict[str, float]:
        """The metrics of the current distribution (computed once per refresh, when logged)."""
        if self._metrics is None:
            assert self.sampler is not None
            p = self.sampler.probabilities
            self._metrics = {
                "importance/ess": float(ess_fraction(p)),
                "importance/max_weight": float(importance_weights(p).max()),
            }
        return self._metrics

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.refresh_every is None and self.sampler is not None:
            self.refresh()
            self._refreshed_epoch = trainer.current_epoch

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:  # restored but not yet attached: keep it as it was
            return dict(self._pending)
        return {
            "scores": None if self.scores is None else self.scores.clone(),
            "batches_seen": self._batches_seen,
            "refreshed_epoch": self._refreshed_epoch,
            "sampler": None if self.sampler is None else self.sampler.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("scores") is None or state_dict.get("sampler") is None:
            return
        self._pending = dict(state_dict)
