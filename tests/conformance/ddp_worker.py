"""Run by test_conformance.py: DDP on 2 CPU processes (gloo); saves each rank's weights."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from backbones import BACKBONES, random_batches  # noqa: E402
from trick_cases import TRICK_CASES  # noqa: E402


def main(trick_name: str, out_dir: str) -> None:
    build_model, _ = BACKBONES["resnet18"]
    pl.seed_everything(0)
    model = build_model()
    if TRICK_CASES[trick_name].optimizer is not None:  # optimizer tricks train with theirs
        model.optimizer_factory = TRICK_CASES[trick_name].optimizer
    # Parameters only: BatchNorm running statistics are per-rank buffers under plain DDP.
    initial = {k: v.detach().clone() for k, v in model.named_parameters()}
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=3,
        log_every_n_steps=1,
        callbacks=TRICK_CASES[trick_name].callbacks(),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, random_batches("resnet18", n=16))
    out = Path(out_dir)
    if trainer.global_rank == 0:
        torch.save(initial, out / "initial.pt")
        active = TRICK_CASES[trick_name].active_metric in trainer.callback_metrics
        (out / "active").write_text(str(active))
    torch.save(
        {k: v.detach().cpu() for k, v in model.named_parameters()},
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
