"""Test the AIMP claim (METHODS.md §4): accelerated IMP halves IMP's wall-clock at equal accuracy.

Claim (Zullich et al., ICPR 2020): at a high final sparsity (10 rounds of 20%, about 89% of the
weights pruned) Accelerated IMP, which shortens every round but the last, needs under half the
wall-clock of IMP with the same rewinding, and its final accuracy is within 1 point of IMP's.

Protocol: an MLP defined here (64 -> 256 -> 256 -> 10, ReLU) on scikit-learn's 8x8 digits
(``DigitsDataModule``, stratified 70/15/15 split), SGD with momentum and weight decay, and a
cosine learning-rate schedule that restarts every ``--epochs-per-round`` epochs (so every arm
replays the same schedule in each round). Every linear weight, the classifier's included, is
pruned globally by magnitude; biases are not. Arms, for each seed (the seed sets the split, the
shuffling and the initialisation; runs with the same seed are paired):

- ``IMP (lr rewinding)``: ``IterativeMagnitudePruning(rewind="lr")``, 11 rounds x E epochs;
- ``AIMP (lr rewinding)``: ``AcceleratedIMP(rewind="lr")``, the 10 first rounds shortened to
  ``--accelerated-epochs`` of E (default 0.4), the last one full;
- ``IMP (rewind to init)``: ``IterativeMagnitudePruning(rewind="init")`` (lottery ticket);
- ``Lightning ModelPruning (lottery ticket)``: Lightning's built-in callback as an outside
  reference (``l1_unstructured``, global, ``use_lottery_ticket_hypothesis=True``, pruning 20% at
  the end of every E-th epoch but the last round's).

Reports, per arm, the final test accuracy of the pruned model and the wall-clock of the whole fit
(mean and standard deviation over seeds), the measured sparsity, the epochs trained, and the
AIMP/IMP wall-clock ratio. Writes ``benchmarks/results/pruning_claim.json`` and
``docs/assets/results/pruning_claim.png``.

Usage::

    python benchmarks/pruning_claim.py           # defaults (~5-10 min on 1 CPU thread)
    python benchmarks/pruning_claim.py --quick   # smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from _common import (
    console,
    init_worker,
    mean_std,
    overhead_summary,
    plot_path,
    run_parallel,
    shown,
    trainer_kwargs,
    write_results,
)
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.callbacks import AcceleratedIMP, IterativeMagnitudePruning
from lightning_dnn_tricks.data import DigitsDataModule
from lightning_dnn_tricks.models.base import SupervisedModule

NAME = "pruning_claim"
ARMS = ("imp_lr", "aimp_lr", "imp_init", "lightning_lth")
LABELS = {
    "imp_lr": "IMP (lr rewinding)",
    "aimp_lr": "AIMP (lr rewinding)",
    "imp_init": "IMP (rewind to init)",
    "lightning_lth": "Lightning ModelPruning (lottery ticket)",
}
#: The claim: AIMP wall-clock at most this fraction of IMP's, accuracy at most 1 point lower.
TIME_RATIO, ACCURACY_MARGIN = 0.5, 0.01


class DigitsMLP(SupervisedModule):
    """A ReLU MLP on flattened 8x8 digits, logging ``{stage}/loss`` and ``{stage}/acc``."""

    def __init__(self, optimizer: Any, scheduler: Any, hidden: int = 256) -> None:
        super().__init__(optimizer, scheduler, "epoch")
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )
        self.build_metrics("acc", lambda: MulticlassAccuracy(num_classes=10, average="micro"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), logits, y


def restarting_cosine(epoch: int, period: int) -> float:
    """Cosine factor from 1 towards 0 over ``period`` epochs, restarting every period."""
    return 0.5 * (1.0 + math.cos(math.pi * (epoch % period) / period))


def lightning_amount(epoch: int, period: int, total: int, amount: float) -> float:
    """ModelPruning's ``amount(epoch)``: prune at the end of every round but the last."""
    return amount if (epoch + 1) % period == 0 and epoch + 1 < total else 0.0


@dataclass(frozen=True)
class RunConfig:
    arm: str
    seed: int


@dataclass
class RunResult:
    config: RunConfig
    test_acc: float
    seconds: float
    cpu_seconds: float
    epochs: int
    sparsity: float
    round_acc: list[float] = field(default_factory=list)
    round_sparsity: list[float] = field(default_factory=list)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pruning rounds")
    parser.add_argument("--amount", type=float, default=0.2, help="fraction pruned per round")
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--accelerated-epochs", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=1, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.epochs_per_round, args.seeds = 2, 2, [0]
    return args


def linear_layers(model: DigitsMLP) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def build_callback(arm: str, model: DigitsMLP, args: argparse.Namespace) -> tuple[Callback, int]:
    """The arm's pruning callback and its number of epochs."""
    common = {"amount": args.amount, "rounds": args.rounds, "verbose": False}
    period = args.epochs_per_round
    if arm == "aimp_lr":
        accelerated = args.accelerated_epochs
        aimp = AcceleratedIMP(
            accelerated_epochs=int(accelerated) if accelerated >= 1 else accelerated,
            epochs_per_round=period,
            rewind="lr",
            **common,
        )
        return aimp, aimp.total_epochs
    if arm in ("imp_lr", "imp_init"):
        rewind = "lr" if arm == "imp_lr" else "init"
        imp = IterativeMagnitudePruning(epochs_per_round=period, rewind=rewind, **common)
        return imp, imp.total_epochs
    total = (args.rounds + 1) * period
    pruning = ModelPruning(
        "l1_unstructured",
        parameters_to_prune=[(layer, "weight") for layer in linear_layers(model)],
        amount=partial(lightning_amount, period=period, total=total, amount=args.amount),
        use_global_unstructured=True,
        use_lottery_ticket_hypothesis=True,
        make_pruning_permanent=True,
        verbose=0,
    )
    return pruning, total


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    pl.seed_everything(config.seed, verbose=False)
    model = DigitsMLP(
        optimizer=partial(
            torch.optim.SGD, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        ),
        scheduler=partial(
            torch.optim.lr_scheduler.LambdaLR,
            lr_lambda=partial(restarting_cosine, period=args.epochs_per_round),
        ),
    )
    callback, epochs = build_callback(config.arm, model, args)
    data = DigitsDataModule(batch_size=args.batch_size, seed=config.seed)
    trainer = pl.Trainer(max_epochs=epochs, callbacks=[callback], **trainer_kwargs())
    start, cpu_start = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=data)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    weights = [layer.weight for layer in linear_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    sparsity = zeros / sum(w.numel() for w in weights)
    test_acc = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    result = RunResult(config, test_acc, seconds, cpu_seconds, trainer.current_epoch, sparsity)
    if isinstance(callback, IterativeMagnitudePruning):
        result.round_acc = [entry.get("val/acc", float("nan")) for entry in callback.history]
        result.round_sparsity = [entry["sparsity"] for entry in callback.history]
    return result


@dataclass(frozen=True)
class Summary:
    arm: str
    test_mean: float
    test_std: float
    seconds_mean: float
    seconds_std: float
    cpu_mean: float
    cpu_std: float
    epochs: int
    sparsity: float


def summarise(results: list[RunResult], arm: str) -> Summary:
    runs = [r for r in results if r.config.arm == arm]
    test_mean, test_std = mean_std([r.test_acc for r in runs])
    seconds_mean, seconds_std = mean_std([r.seconds for r in runs])
    cpu_mean, cpu_std = mean_std([r.cpu_seconds for r in runs])
    return Summary(
        arm,
        test_mean,
        test_std,
        seconds_mean,
        seconds_std,
        cpu_mean,
        cpu_std,
        round(statistics.fmean(r.epochs for r in runs)),
        statistics.fmean(r.sparsity for r in runs),
    )


def plot(results: list[RunResult], summaries: dict[str, Summary], path: Any, args: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"imp_lr": "tab:blue", "aimp_lr": "tab:orange", "imp_init": "tab:green"}
    colors["lightning_lth"] = "0.4"
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for arm in ("imp_lr", "aimp_lr", "imp_init"):
        runs = [r for r in results if r.config.arm == arm]
        rounds = len(runs[0].round_acc)
        means = [statistics.fmean(r.round_acc[i] for r in runs) for i in range(rounds)]
        left.plot(
            [100 * s for s in runs[0].round_sparsity[:rounds]],
            means,
            marker="o",
            color=colors[arm],
            label=LABELS[arm],
        )
    left.set_xlabel("sparsity of the linear weights (%)")
    left.set_ylabel("validation accuracy at the end of the round")
    left.set_title("(a) accuracy along the rounds (mean over seeds)")
    left.legend(fontsize=8)
    arms = list(ARMS)
    positions = list(range(len(arms)))
    for offset, attribute, hatch, label in (
        (-0.2, "seconds", "", "wall-clock"),
        (0.2, "cpu", "//", "CPU time"),
    ):
        right.bar(
            [x + offset for x in positions],
            [getattr(summaries[a], f"{attribute}_mean") for a in arms],
            width=0.4,
            yerr=[getattr(summaries[a], f"{attribute}_std") for a in arms],
            color=[colors[a] for a in arms],
            hatch=hatch,
            edgecolor="white" if not hatch else "black",
            capsize=3,
            label=label,
        )
    for x, arm in zip(positions, arms, strict=True):
        s = summaries[arm]
        top = max(s.seconds_mean + s.seconds_std, s.cpu_mean + s.cpu_std)
        right.text(x, top, f"acc {s.test_mean:.3f}", ha="center", va="bottom", fontsize=8)
    right.legend(fontsize=8)
    right.set_xticks(list(positions), [LABELS[a].replace(" (", "\n(") for a in arms], fontsize=7)
    right.set_ylabel("seconds for the whole fit")
    right.set_title("(b) time per fit (mean ± std), final test accuracy")
    fig.suptitle(
        f"Pruning an MLP on digits: {args.rounds} rounds of {args.amount:g}, "
        f"{len(args.seeds)} seed(s)",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    console.print(
        f"[bold]{NAME}[/]: {args.rounds} rounds of {args.amount}, {args.epochs_per_round} epochs "
        f"per round, seeds {args.seeds}, {args.workers} worker(s) x {torch.get_num_threads()} "
        "thread(s)"
    )
    configs = [RunConfig(arm, seed) for seed in args.seeds for arm in ARMS]
    results: list[RunResult] = []

    def record(result: RunResult) -> None:
        results.append(result)
        console.print(
            f"{LABELS[result.config.arm]}, seed {result.config.seed}: test {result.test_acc:.4f}, "
            f"sparsity {result.sparsity:.4f}, {result.epochs} epochs, {result.seconds:.1f} s"
        )

    run_parallel(
        partial(train_once, args=args), configs, record, workers=args.workers, threads=args.threads
    )
    summaries = {arm: summarise(results, arm) for arm in ARMS}
    imp, aimp = summaries["imp_lr"], summaries["aimp_lr"]
    ratio = aimp.seconds_mean / imp.seconds_mean
    cpu_ratio = aimp.cpu_mean / imp.cpu_mean
    gap = aimp.test_mean - imp.test_mean
    rows = [
        [
            LABELS[s.arm],
            round(s.test_mean, 4),
            round(s.test_std, 4),
            round(s.seconds_mean, 2),
            round(s.seconds_std, 2),
            round(s.seconds_mean / imp.seconds_mean, 3),
            round(s.cpu_mean, 2),
            round(s.cpu_std, 2),
            round(s.cpu_mean / imp.cpu_mean, 3),
            s.epochs,
            round(s.sparsity, 4),
            len(args.seeds),
        ]
        for s in summaries.values()
    ]
    columns = [
        "arm",
        "test acc mean",
        "test acc std",
        "wall-clock s mean",
        "wall-clock s std",
        "wall-clock / IMP (lr)",
        "CPU time s mean",
        "CPU time s std",
        "CPU time / IMP (lr)",
        "epochs",
        "sparsity",
        "seeds",
    ]
    met = ratio <= TIME_RATIO and gap >= -ACCURACY_MARGIN
    cpu_met = cpu_ratio <= TIME_RATIO and gap >= -ACCURACY_MARGIN
    notes = (
        f"AIMP / IMP (both lr rewinding) wall-clock ratio {ratio:.3f}, CPU-time ratio "
        f"{cpu_ratio:.3f} (claim: <= {TIME_RATIO}); test accuracy AIMP minus IMP {gap:+.4f} "
        f"(claim: within {ACCURACY_MARGIN:.2f}). Claim {'met' if met else 'not met'} on "
        f"wall-clock, {'met' if cpu_met else 'not met'} on CPU time. Each run uses one torch "
        "thread; on a shared machine other processes stretch the wall-clock of some runs (see "
        "its std), the process CPU time is the steadier measure of the work. The epochs ratio is "
        f"{aimp.epochs}/{imp.epochs} = {aimp.epochs / imp.epochs:.3f}; the rest is per-fit cost "
        "that does not shrink (start-up, data set-up). Sparsity is measured on the pruned "
        "linear weights after training (target "
        f"{1 - (1 - args.amount) ** args.rounds:.4f}). Wall-clock covers the whole fit, validation "
        f"every epoch included, on a shared machine; std is over seeds. "
        f"{overhead_summary('iterative_pruning')} "
        f"Wall time {(time.perf_counter() - started) / 60:.1f} min."
    )
    settings = {
        "model": "MLP 64-256-256-10 (ReLU), all three linear weights pruned, biases not",
        "data": "DigitsDataModule(image_size=8, channels=1, batch_size="
        f"{args.batch_size}, seed=SEED): stratified 70/15/15 split",
        "optimizer": f"SGD(lr={args.lr}, momentum={args.momentum}, "
        f"weight_decay={args.weight_decay})",
        "scheduler": f"LambdaLR: cosine over {args.epochs_per_round} epochs, restarting every "
        "round",
        "rounds": args.rounds,
        "amount": args.amount,
        "epochs_per_round": args.epochs_per_round,
        "accelerated_epochs": args.accelerated_epochs,
        "scope": "global",
        "seeds": args.seeds,
        "torch_threads_per_run": torch.get_num_threads(),
        "parallel_runs": args.workers,
        "quick": args.quick,
    }
    path = write_results(
        NAME, settings=settings, columns=columns, rows=rows, notes=notes, quick=args.quick
    )
    figure = plot_path(NAME, quick=args.quick)
    plot(results, summaries, figure, args)
    console.print(notes)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
