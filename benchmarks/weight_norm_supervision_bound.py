"""Does Weight Norm Supervision hold its bound under large learning rates?

An LSTM (and a tanh RNN) trained with plain SGD at a large learning rate on random sequence
regression, with the default WeightNormSupervision (``weight_hh`` projected to 0.95, one power
iteration per step plus the near-bound check). After every optimizer step the exact spectral norm
(``torch.linalg.matrix_norm(W, 2)``) of each supervised matrix is recorded. Reports the largest
exact norm over all steps against the bound, and the power iterations per step. Writes
``benchmarks/results/weight_norm_supervision_bound.json``.

    python benchmarks/weight_norm_supervision_bound.py [--steps 300]
"""

from __future__ import annotations

import argparse
from typing import Any

import lightning.pytorch as pl
import torch
from _common import write_results
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn_tricks.callbacks import WeightNormSupervision
from lightning_dnn_tricks.models import SequenceModel

BOUND = 0.95
COLUMNS = [
    "cell",
    "lr",
    "steps",
    "bound",
    "max exact norm",
    "max / bound",
    "mean iterations",
    "max iterations",
]


class ExactNorms(pl.Callback):
    """The exact spectral norm of every ``weight_hh`` after each step, and WNS's iterations."""

    def __init__(self, wns: WeightNormSupervision) -> None:
        self.wns = wns
        self.norms: list[float] = []
        self.iterations: list[int] = []

    def on_train_batch_end(self, trainer: pl.Trainer, module: Any, *args: Any) -> None:
        for name, p in module.named_parameters():
            if "weight_hh" in name:
                self.norms.append(float(torch.linalg.matrix_norm(p.detach(), ord=2)))
        self.iterations += list(self.wns.last_iterations.values())


def run(cell: str, lr: float, steps: int) -> list[Any]:
    pl.seed_everything(0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(512, 20, 2, generator=generator)
    y = x.sum(dim=(1, 2)).unsqueeze(1)
    model = SequenceModel(
        cell=cell,  # type: ignore[arg-type]
        input_size=2,
        hidden_size=32,
        optimizer=lambda params: torch.optim.SGD(params, lr=lr),
    )
    wns = WeightNormSupervision()
    exact = ExactNorms(wns)
    trainer = pl.Trainer(
        max_steps=steps,
        callbacks=[wns, exact],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=0.25,  # as in the word-language-model demos trained at lr 20
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True))
    largest = max(exact.norms)
    mean_iterations = sum(exact.iterations) / len(exact.iterations)
    print(
        f"{cell} lr={lr}: max exact norm {largest:.4f} vs bound {BOUND} "
        f"({largest / BOUND:.4f}x), iterations mean {mean_iterations:.2f} max "
        f"{max(exact.iterations)}"
    )
    return [
        cell,
        lr,
        steps,
        BOUND,
        round(largest, 4),
        round(largest / BOUND, 4),
        round(mean_iterations, 2),
        max(exact.iterations),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    rows = [run("lstm", 20.0, args.steps), run("rnn", 20.0, args.steps)]
    notes = (
        "Exact spectral norm of weight_hh after every optimizer step, default "
        "WeightNormSupervision (project to 0.95, iterations=1 plus the near-bound check), "
        "plain SGD with gradient clipping at 0.25 (as the word-language-model demos at lr 20)."
    )
    settings = {"steps": args.steps, "hidden_size": 32, "batch_size": 32, "sequence_length": 20}
    path = write_results(
        "weight_norm_supervision_bound", settings=settings, columns=COLUMNS, rows=rows, notes=notes
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
