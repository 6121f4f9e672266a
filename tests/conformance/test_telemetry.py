"""Every trick's health metric reaches a real logger (CSVLogger) at the Trainer's defaults."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
from composition_model import CompositionModel, loader
from lightning.pytorch.loggers import CSVLogger
from trick_cases import TrickCase

from lightning_dnn_tricks.callbacks import IterativeMagnitudePruning


def _sgd(params: object) -> object:
    import torch

    return torch.optim.SGD(params, lr=0.05, momentum=0.9)  # type: ignore[arg-type]


@pytest.mark.slow
def test_metrics_reach_a_csv_logger_at_trainer_defaults(
    trick_case: TrickCase, tmp_path: Path
) -> None:
    pl.seed_everything(0)
    model = CompositionModel(trick_case.optimizer or _sgd)  # type: ignore[arg-type]
    callbacks = trick_case.callbacks()
    pruning = any(isinstance(cb, IterativeMagnitudePruning) for cb in callbacks)
    trainer = pl.Trainer(  # log_every_n_steps left at its default (50)
        max_steps=-1 if pruning else 60,
        max_epochs=-1,
        callbacks=callbacks,
        logger=CSVLogger(tmp_path, name="run"),
        accelerator="cpu",
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    assert trainer.log_every_n_steps == 50
    trainer.fit(model, loader())
    (metrics_file,) = tmp_path.glob("run/version_*/metrics.csv")
    with metrics_file.open() as handle:
        rows = list(csv.DictReader(handle))
    logged = [row for row in rows if row.get(trick_case.active_metric)]
    assert logged, f"{trick_case.active_metric} never reached the CSVLogger ({len(rows)} rows)"
    if not pruning:  # a per-step metric: logged at step 49 by the Trainer's rule
        assert {int(row["step"]) for row in logged} == {49}
