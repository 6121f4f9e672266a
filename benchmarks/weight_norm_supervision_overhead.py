"""Per-step overhead of Weight Norm Supervision on the models of its claim benchmark (CPU).

``benchmarks/overhead.py`` measures every trick on a timm ``resnet18``; this script measures WNS
where the paper's setting puts it: the predictive coding network (digits-sized 1x8x8 inputs, 3
cycles, feedforward and feedback convolutions projected, one power iteration through each conv
operator per step) and the tanh RNN of the adding problem (length 10, ``weight_hh`` projected).
Each round trains, for both models, a fresh fit without and with the callback (same seed, same
fixed random batches, the order alternating between rounds); the step time runs from
``on_train_batch_start`` to ``on_train_batch_end`` and the first steps of every fit are dropped.
The ratio is the median step time with WNS over the median without, pooled over rounds, with a
95% bootstrap interval over rounds. Writes
``benchmarks/results/weight_norm_supervision_overhead.json``.

Usage::

    python benchmarks/weight_norm_supervision_overhead.py          # ~2 min on 2 cores
    python benchmarks/weight_norm_supervision_overhead.py --quick  # smoke run
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from _common import (
    TrickStepTimer,
    bootstrap_interval,
    console,
    progress,
    quiet_lightning,
    trainer_kwargs,
    write_results,
)
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn_tricks.callbacks import NormGroup, WeightNormSupervision
from lightning_dnn_tricks.data import make_adding_problem
from lightning_dnn_tricks.models import PredictiveCodingNetwork, SequenceModel

NAME = "weight_norm_supervision_overhead"
TARGET = 1.10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=40, help="training steps per fit")
    parser.add_argument("--warmup", type=int, default=5, help="steps dropped at each fit start")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 10 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 10, 2
    return args


def pcn() -> tuple[pl.LightningModule, DataLoader[Any], WeightNormSupervision]:
    model = PredictiveCodingNetwork(
        hidden_channels=(16, 32),
        strides=(1, 2),
        cycles=3,
        optimizer=partial(torch.optim.Adam, lr=3e-3),
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8 * 64, 1, 8, 8, generator=generator)
    labels = torch.randint(0, 10, (8 * 64,), generator=generator)
    wns = WeightNormSupervision(
        groups=[
            NormGroup("feedforward", bound=4.0, include=r"^feedforward\."),
            NormGroup("feedback", bound=0.25, include=r"^feedback\."),
        ],
        iterations=1,
    )
    return model, DataLoader(TensorDataset(images, labels), batch_size=64), wns


def rnn() -> tuple[pl.LightningModule, DataLoader[Any], WeightNormSupervision]:
    model = SequenceModel(
        "rnn", input_size=2, hidden_size=32, optimizer=partial(torch.optim.Adam, lr=1e-2)
    )
    x, y = make_adding_problem(8 * 64, 10, torch.Generator().manual_seed(0))
    wns = WeightNormSupervision(
        groups=[NormGroup("recurrent", bound=0.95, include="weight_hh")],
        iterations=1,
    )
    return model, DataLoader(TensorDataset(x, y), batch_size=64), wns


MODELS: dict[str, Callable[[], tuple[pl.LightningModule, DataLoader[Any], WeightNormSupervision]]]
MODELS = {
    "PCN (digits 8x8, 3 cycles; FF <= 4, FB <= 0.25)": pcn,
    "tanh RNN (adding, length 10; W_hh <= 0.95)": rnn,
}


def timed_fit(build: Callable[..., Any], with_wns: bool, args: argparse.Namespace) -> list[float]:
    """Step times (seconds, warm-up dropped) of one fresh fit."""
    pl.seed_everything(0, verbose=False)
    model, loader, wns = build()
    timer = TrickStepTimer()
    callbacks = [timer, timer.instrument(wns)] if with_wns else [timer]
    trainer = pl.Trainer(max_steps=args.steps, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(model, train_dataloaders=loader)
    return timer.durations[args.warmup :]


def ratio(rounds: Sequence[tuple[list[float], list[float]]]) -> float:
    without = [t for base, _ in rounds for t in base]
    with_wns = [t for _, trick in rounds for t in trick]
    return statistics.median(with_wns) / statistics.median(without)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results: dict[str, list[tuple[list[float], list[float]]]] = {name: [] for name in MODELS}
    with progress() as bar:
        task = bar.add_task("warm-up fits (not timed)", total=(args.rounds + 1) * len(MODELS) * 2)
        for build in MODELS.values():  # the first fits of a process pay one-off start-up costs
            for with_wns in (False, True):
                timed_fit(build, with_wns, args)
                bar.advance(task)
        for round_index in range(args.rounds):
            for name, build in MODELS.items():
                order = (False, True) if round_index % 2 == 0 else (True, False)
                times: dict[bool, list[float]] = {}
                for with_wns in order:
                    bar.update(task, description=f"round {round_index + 1}: {name.split(' (')[0]}")
                    times[with_wns] = timed_fit(build, with_wns, args)
                    bar.advance(task)
                results[name].append((times[False], times[True]))
    columns = [
        "model",
        "without WNS ms/step",
        "with WNS ms/step",
        "ratio",
        "ratio 95% CI",
        "target ratio",
        "target met",
    ]
    rows = []
    for name, rounds in results.items():
        value = ratio(rounds)
        low, high = bootstrap_interval(rounds, ratio)
        base = statistics.median(t for b, _ in rounds for t in b)
        trick = statistics.median(t for _, w in rounds for t in w)
        met = "yes" if value <= TARGET else "no"
        rows.append(
            [
                name,
                round(1e3 * base, 2),
                round(1e3 * trick, 2),
                round(value, 4),
                f"[{low:.4f}, {high:.4f}]",
                f"<= {TARGET}",
                met,
            ]
        )
        console.print(f"{name}: ratio {value:.4f} [{low:.4f}, {high:.4f}], target met: {met}")
    notes = (
        "Step time = on_train_batch_start to on_train_batch_end (forward, backward, the WNS "
        "hooks, optimizer step, and the projection in the optimizer's step post-hook), CPU, "
        f"{torch.get_num_threads()} torch thread(s); {args.rounds} rounds of one fit without and "
        f"one with WNS per model, {args.steps} steps each, the first {args.warmup} dropped, "
        "after one untimed warm-up fit of each kind; "
        "fixed random inputs of the claim benchmark's shapes (batch 64). Ratio = median step with "
        "WNS / median step without, over all kept steps; 95% percentile bootstrap over rounds."
    )
    settings = {
        "rounds": args.rounds,
        "steps_per_fit": args.steps,
        "warmup_steps_dropped": args.warmup,
        "torch_threads": torch.get_num_threads(),
        "power_iterations_per_step": 1,
        "mode": "project",
        "quick": args.quick,
    }
    path = write_results(
        NAME, settings=settings, columns=columns, rows=rows, notes=notes, quick=args.quick
    )
    console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
