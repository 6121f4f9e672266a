"""The main job (``make demo`` / ``ldt demo``): a timm backbone on digits with and without tricks.

Trains the same model from the same seed once per configuration, on the available accelerator
(``--accelerator auto``), and prints test accuracy, wall time and median step time.

There is no overhead column. Each configuration is one training run, and the runs follow each
other: a ratio of their step times measures how busy the machine was during each run as much as
what the trick costs (it read "0.32x" for a trick on a loaded machine). Measuring it robustly
needs the configurations' steps interleaved in one process, many times over, which is what the
overhead benchmark does (``benchmarks/overhead.py``); each method card shows its trick's row of
it. The demo's job is the accuracy comparison, and its step times are plain measurements of
each run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import lightning.pytorch as pl
import torch

from lightning_dnn_tricks.callbacks import BNSR, NormLoss, WeightAlign
from lightning_dnn_tricks.callbacks._log_progress import progress_bar_for_logs
from lightning_dnn_tricks.callbacks.step_timer import StepTimer

DESCRIPTION = """\
The main job: a timm model trained on scikit-learn's digits (32x32, offline) from the same
seed once per configuration (no regulariser, weight decay, Norm Loss, WeightAlign, BNSR),
then a table of test accuracy, wall time and median step time.

Step times are one run each, in sequence: they are not an overhead measurement (the method
cards show the interleaved overhead benchmark's numbers)."""


@dataclass(frozen=True)
class DemoConfiguration:
    """One row of the demo: optimizer weight decay plus the tricks' callbacks."""

    name: str
    weight_decay: float = 0.0
    callbacks: Callable[[], list[pl.Callback]] = field(default=list)


CONFIGURATIONS: tuple[DemoConfiguration, ...] = (
    DemoConfiguration("baseline (AdamW, no regulariser)"),
    DemoConfiguration("baseline + weight decay 0.05", weight_decay=0.05),
    DemoConfiguration("Norm Loss 5e-3 (no weight decay)", callbacks=lambda: [NormLoss(5e-3)]),
    DemoConfiguration("WeightAlign (+ BatchNorm)", callbacks=lambda: [WeightAlign()]),
    DemoConfiguration("BNSR (our reconstruction)", callbacks=lambda: [BNSR()]),
)


@dataclass
class DemoResult:
    name: str
    test_acc: float
    wall_seconds: float
    step_seconds: float


def run_configuration(
    configuration: DemoConfiguration,
    args: argparse.Namespace,
    out: TextIO | None = None,
    max_steps: int | None = None,
) -> DemoResult:
    """Train and test one configuration; return its measurements."""
    from lightning_dnn_tricks.data import DigitsDataModule
    from lightning_dnn_tricks.models import TimmClassifier

    pl.seed_everything(args.seed, verbose=False)
    decay = configuration.weight_decay

    def optimizer(params: Any) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=args.lr, weight_decay=decay)

    model = TimmClassifier(args.model, num_classes=10, in_chans=3, optimizer=optimizer)
    data = DigitsDataModule(batch_size=args.batch_size, image_size=32, channels=3, seed=args.seed)
    timer = StepTimer()
    callbacks = [*configuration.callbacks(), timer]
    show_progress = max_steps is None
    bar = progress_bar_for_logs(show_progress, callbacks)  # one line per epoch in a log
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=1,
        max_epochs=args.epochs,
        max_steps=args.max_steps if max_steps is None else max_steps,
        callbacks=callbacks if bar is None else [*callbacks, bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=show_progress,
        deterministic=True,
    )
    started = time.perf_counter()
    trainer.fit(model, data)
    wall = time.perf_counter() - started
    (metrics,) = trainer.test(model, data, verbose=False)
    print(f"  test accuracy {metrics['test/acc']:.4f}, {wall:.1f} s", file=out or sys.stdout)
    return DemoResult(configuration.name, metrics["test/acc"], wall, timer.median_seconds())


def results_table(results: Sequence[DemoResult], args: argparse.Namespace) -> str:
    """The comparison as a plain-text table (reads the same in a terminal and in a log)."""
    header = ("configuration", "test acc", "wall s", "ms/step")
    rows = [
        (
            result.name,
            f"{result.test_acc:.4f}",
            f"{result.wall_seconds:.1f}",
            f"{1000 * result.step_seconds:.1f}",
        )
        for result in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        return "  ".join(cells)

    title = f"timm {args.model} on digits 32x32, {args.epochs} epochs, batch {args.batch_size}"
    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *map(line, rows), rule])


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help; the description's line breaks kept."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ldt demo", description=DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--model", default="resnet18", help="timm architecture")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs per configuration")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the model and the data split")
    parser.add_argument(
        "--accelerator",
        default="auto",
        help="Lightning accelerator: auto (a GPU when there is one), cpu, gpu, mps",
    )
    parser.add_argument(
        "--max-steps", type=int, default=-1, help="stop each run after N steps (-1: no limit)"
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] = ()) -> list[DemoResult]:
    """Run every demo configuration and print the comparison table."""
    args = parse_args(argv)
    print("Warming up (a few unreported steps, so the first row is not penalised)...")
    run_configuration(CONFIGURATIONS[0], args, max_steps=5)
    results = []
    for index, configuration in enumerate(CONFIGURATIONS, start=1):
        print(f"\n-- [{index}/{len(CONFIGURATIONS)}] {configuration.name} --")
        results.append(run_configuration(configuration, args))
    print(results_table(results, args))
    print(
        "ms/step: median training-step time of each run (one run each, in sequence; not an "
        "overhead measurement: see the method cards for the interleaved overhead benchmark)."
    )
    return results
