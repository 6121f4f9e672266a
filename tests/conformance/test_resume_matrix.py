"""Resume from any point: every trick x resume point x {max_steps set, unset}, bit-exact.

A run of 3 epochs of 4 batches writes a checkpoint mid-epoch (step 6), on the last batch of an
epoch (step 4, ``every_n_train_steps``) and at an epoch's end (``save_on_train_epoch_end``); a run
resumed from each must end with exactly the weights of the uninterrupted run. The last-batch
checkpoint is the case Lightning resumes into the next epoch without its ``on_train_epoch_start``
(and without the finished epoch's end hooks); with ``max_steps`` set, an epoch-end checkpoint
makes Lightning restart the finished epoch (see ``ResumableDataLoader``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from composition_model import OPTIMIZERS, CompositionModel, sgd, trick_callbacks
from ldt_testing import QUIET_TRAINER
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import TensorDataset

from lightning_dnn_tricks import TrickConfigurationError, TrickWarning, list_tricks
from lightning_dnn_tricks.callbacks import (
    BNSR,
    AdaptiveImportanceSampling,
    IterativeMagnitudePruning,
    NormGroup,
    NormLoss,
    WeightAlign,
    WeightNormSupervision,
)
from lightning_dnn_tricks.data import EpochSeededRandomSampler, ResumableDataLoader

EPOCHS, BATCHES = 3, 4
RESUME_POINTS = {
    "mid_epoch": ("steps", "step=6"),
    "last_batch_of_epoch": ("steps", "step=4"),
    "end_of_epoch": ("epochs", "step=4"),
}


def _callbacks(name: str) -> list[pl.Callback]:
    if name == "importance_sampling":  # the end-of-epoch refresh is the work at stake
        return [AdaptiveImportanceSampling()]
    return trick_callbacks(name)


def _loader(name: str) -> ResumableDataLoader:
    generator = torch.Generator().manual_seed(0)
    dataset = TensorDataset(
        torch.randn(16, 1, 6, 6, generator=generator),
        torch.randint(0, 4, (16,), generator=generator),
    )
    if name == "importance_sampling":  # it draws the examples itself
        return ResumableDataLoader(dataset, batch_size=4)
    return ResumableDataLoader(
        dataset, batch_size=4, sampler=EpochSeededRandomSampler(dataset, seed=1)
    )


def _fit(
    name: str,
    max_steps: int,
    tmp: Path,
    ckpt_path: str | None = None,
    tricks: list[pl.Callback] | None = None,
) -> pl.Trainer:
    pl.seed_everything(0)
    model = CompositionModel(OPTIMIZERS.get(name, sgd))
    callbacks: list[Any] = _callbacks(name) if tricks is None else tricks
    if ckpt_path is None:
        callbacks += [
            ModelCheckpoint(dirpath=tmp / "steps", every_n_train_steps=2, save_top_k=-1),
            ModelCheckpoint(
                dirpath=tmp / "epochs",
                every_n_epochs=1,
                save_on_train_epoch_end=True,
                save_top_k=-1,
            ),
        ]
    trainer = pl.Trainer(
        max_epochs=-1 if max_steps > 0 else EPOCHS,
        max_steps=max_steps,
        deterministic=True,
        callbacks=callbacks,
        **{**QUIET_TRAINER, "enable_checkpointing": ckpt_path is None},
    )
    trainer.fit(model, _loader(name), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("max_steps", [-1, EPOCHS * BATCHES], ids=["max_epochs", "max_steps"])
@pytest.mark.parametrize("trick", sorted(spec.name for spec in list_tricks()))
def test_resume_from_every_point_is_bit_exact(trick: str, max_steps: int, tmp_path: Path) -> None:
    uninterrupted = _fit(trick, max_steps, tmp_path)
    assert uninterrupted.global_step == EPOCHS * BATCHES
    final = {k: v.clone() for k, v in uninterrupted.lightning_module.state_dict().items()}
    for point, (folder, step) in RESUME_POINTS.items():
        checkpoint = next((tmp_path / folder).glob(f"*{step}.ckpt"))
        resumed = _fit(trick, max_steps, tmp_path, ckpt_path=str(checkpoint))
        assert resumed.global_step == EPOCHS * BATCHES, point
        for key, value in resumed.lightning_module.state_dict().items():
            assert torch.equal(value, final[key]), f"{point}: {key} differs after resume"


def _pruning(**changes: Any) -> IterativeMagnitudePruning:
    arguments = {"amount": 0.5, "rounds": 2, "epochs_per_round": 1, "monitor": None}
    return IterativeMagnitudePruning(**{**arguments, "verbose": False, **changes})


def _wns(iterations: int) -> WeightNormSupervision:
    group = NormGroup("backbone", bound=0.5, include="backbone")
    return WeightNormSupervision(groups=[group], iterations=iterations)


#: (trick name, the checkpointed run's callback, the resumed run's, what the message names)
REFUSED_CHANGES = [
    ("iterative_pruning", _pruning, lambda: _pruning(amount=0.2), "amount=0.5 (checkpoint)"),
    (
        "iterative_pruning",
        _pruning,
        lambda: _pruning(rewind="weights", rewind_step=1),
        "rewind='lr' (checkpoint) vs rewind='weights' (now)",
    ),
    ("bnsr", lambda: BNSR(alpha=1.0), lambda: BNSR(alpha=0.5), "alpha=1.0 (checkpoint)"),
    (
        "importance_sampling",
        lambda: AdaptiveImportanceSampling(theta=0.3),
        lambda: AdaptiveImportanceSampling(theta=0.5),
        "theta=0.3 (checkpoint) vs theta=0.5 (now)",
    ),
    (
        "weight_align",
        lambda: WeightAlign(include="backbone"),
        lambda: WeightAlign(include="backbone", gain=1.0),
        "gain=",
    ),
]

WARNED_CHANGES = [
    ("norm_loss", lambda: NormLoss(strength=0.1), lambda: NormLoss(strength=0.2), "strength=0.2"),
    ("iterative_pruning", _pruning, lambda: _pruning(monitor="train/loss"), "monitor="),
    ("weight_norm_supervision", lambda: _wns(1), lambda: _wns(3), "iterations=3"),
]


@pytest.mark.parametrize(("trick", "before", "after", "named"), REFUSED_CHANGES)
def test_resume_with_another_configuration_is_refused_showing_both_values(
    trick: str, before: Any, after: Any, named: str, tmp_path: Path
) -> None:
    _fit(trick, -1, tmp_path, tricks=[before()])
    checkpoint = next((tmp_path / "steps").glob("*step=6.ckpt"))
    with pytest.raises(TrickConfigurationError, match="another configuration") as raised:
        _fit(trick, -1, tmp_path, ckpt_path=str(checkpoint), tricks=[after()])
    assert named in str(raised.value)


@pytest.mark.parametrize(("trick", "before", "after", "named"), WARNED_CHANGES)
def test_resume_with_a_legitimate_change_warns(
    trick: str, before: Any, after: Any, named: str, tmp_path: Path
) -> None:
    _fit(trick, -1, tmp_path, tricks=[before()])
    checkpoint = next((tmp_path / "steps").glob("*step=6.ckpt"))
    with pytest.warns(TrickWarning, match=named):
        _fit(trick, -1, tmp_path, ckpt_path=str(checkpoint), tricks=[after()])


def test_resume_into_a_restarted_epoch_with_max_epochs_warns(tmp_path: Path) -> None:
    """Lightning's own quirk (max_steps and max_epochs, epoch-end checkpoint) is named."""
    _fit("norm_loss", EPOCHS * BATCHES, tmp_path)
    checkpoint = next((tmp_path / "epochs").glob("*step=4.ckpt"))
    pl.seed_everything(0)
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        max_steps=EPOCHS * BATCHES,
        callbacks=trick_callbacks("norm_loss"),
        **QUIET_TRAINER,
    )
    with pytest.warns(TrickWarning, match="stops this run one epoch early"):
        trainer.fit(CompositionModel(sgd), _loader("norm_loss"), ckpt_path=str(checkpoint))
