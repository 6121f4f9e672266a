"""Test the WeightAlign claim (METHODS.md §7): accuracy that holds at tiny batch sizes, and speed.

Claim (Shi et al., ICPR 2020): WeightAlign normalises without sample statistics, so its accuracy
is stable from large to tiny batches (e.g. 64 -> 2) where BatchNorm degrades, and combined with
BN or GN it is not worse than either alone. Our speed target: per training step it is at most as
slow as the same model with timm's ``StdConv2d`` convolutions (weight standardisation, the closest
existing layer) and at most 15% slower than the plain model.

(a) Speed: ``weight_align_speed.py`` (run from here unless ``--skip-speed``): resnet18 at batch
    64 on CPU, plain vs timm ``StdConv2d`` vs WeightAlign, interleaved step by step.
(b) Accuracy: a timm backbone (``resnet10t`` by default, random init: resnet18's per-step cost at
    batch 2 does not fit the time budget) on scikit-learn's digits at 32x32 RGB
    (``DigitsDataModule``), at batch sizes 64, 8 and 2, with five normalisations: BatchNorm (the
    backbone as built), GroupNorm (every BatchNorm2d swapped for GroupNorm with gcd(C, 32) groups,
    affine parameters copied), WeightAlign alone (every BatchNorm2d replaced by Identity), WA+BN
    and WA+GN (the ``WeightAlign`` callback, default settings). SGD with momentum, a cosine
    schedule, the same number of epochs at every batch size (incomplete last batches dropped: a
    batch of one breaks BatchNorm on the 1x1 maps of the last stage). Each normalisation gets its
    own learning rate: the one of ``--lr-grid`` with the best *validation* accuracy at the largest
    batch size and the first seed; at a batch size ``B`` it is scaled linearly (``lr * B / 64``).
    Test accuracy after the last epoch, mean and standard deviation over seeds (the seed sets the
    split, the shuffling and the initialisation).

Writes ``benchmarks/results/weight_align_claim.json`` (accuracy), ``weight_align_speed.json``
(speed, unless ``--skip-speed``) and the plot ``docs/assets/results/weight_align_claim.png``;
per-run records go to ``benchmarks/results/weight_align_claim.runs.json`` (``--resume`` reuses
the matching ones).

Usage::

    python benchmarks/weight_align_claim.py           # defaults (~60 min on 2 idle CPU cores)
    python benchmarks/weight_align_claim.py --quick   # smoke run (~2-3 min)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import weight_align_speed as speed
from _common import (
    RESULTS_DIR,
    console,
    mean_std,
    plot_path,
    quiet_lightning,
    shown,
    trainer_kwargs,
    write_results,
)
from torch import nn

from lightning_dnn_tricks.callbacks import WeightAlign
from lightning_dnn_tricks.data import DigitsDataModule
from lightning_dnn_tricks.models import TimmClassifier
from lightning_dnn_tricks.nn import LayerSelection, replace_modules

NAME = "weight_align_claim"
Norm = Literal["bn", "gn", "wa", "wa_bn", "wa_gn"]
NORMS: tuple[Norm, ...] = ("bn", "gn", "wa", "wa_bn", "wa_gn")
#: Mean test accuracy below this (chance is 0.1 on 10 classes) means the setting did not train.
FAILED_BELOW = 0.2
LABELS = {"bn": "BN", "gn": "GN", "wa": "WA alone", "wa_bn": "WA + BN", "wa_gn": "WA + GN"}
BATCH_NORMS = LayerSelection(types=(nn.BatchNorm2d,))


# --------------------------------------------------------------------------- model variants
def group_norm_like(batch_norm: nn.Module) -> nn.Module:
    """A GroupNorm with ``gcd(C, 32)`` groups and the BatchNorm's affine parameters."""
    assert isinstance(batch_norm, nn.BatchNorm2d)
    channels = batch_norm.num_features
    group_norm = nn.GroupNorm(math.gcd(channels, 32), channels, eps=batch_norm.eps)
    with torch.no_grad():
        group_norm.weight.copy_(batch_norm.weight)
        group_norm.bias.copy_(batch_norm.bias)
    return group_norm


def swap_norms(model: nn.Module, norm: Norm) -> None:
    """Replace the BatchNorm2d layers of ``model`` as ``norm`` asks (BN is kept for bn/wa_bn)."""
    if norm in ("gn", "wa_gn"):
        replace_modules(model, BATCH_NORMS, group_norm_like, tag="group_norm")
    elif norm == "wa":
        replace_modules(model, BATCH_NORMS, lambda module: nn.Identity(), tag="no_norm")


# --------------------------------------------------------------------------- (b) accuracy
@dataclass(frozen=True)
class RunConfig:
    norm: Norm
    batch_size: int
    seed: int
    lr: float  # at batch size 64


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    val_acc: float
    test_acc: float
    seconds: float


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    """Train one model on digits and return its validation and test accuracy."""
    start = time.perf_counter()
    pl.seed_everything(config.seed, verbose=False)
    lr = config.lr * config.batch_size / 64
    model = TimmClassifier(
        args.model,
        num_classes=10,
        in_chans=3,
        optimizer=partial(torch.optim.SGD, lr=lr, momentum=args.momentum),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=args.epochs),
    )
    swap_norms(model.model, config.norm)
    callbacks: list[pl.Callback] = []
    if config.norm.startswith("wa"):
        callbacks.append(WeightAlign())
    data = DigitsDataModule(
        batch_size=config.batch_size, image_size=32, channels=3, seed=config.seed, drop_last=True
    )
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        limit_val_batches=0,
        limit_train_batches=args.limit_train_batches,
        **trainer_kwargs(),
    )
    trainer.fit(model, datamodule=data)
    evaluator = pl.Trainer(**trainer_kwargs())  # the fit's Trainer skips validation
    val_acc = float(evaluator.validate(model, datamodule=data, verbose=False)[0]["val/acc"])
    test_acc = float(evaluator.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    return RunResult(config, val_acc, test_acc, time.perf_counter() - start)


def _init_worker(threads: int) -> None:
    quiet_lightning()
    torch.set_num_threads(threads)


def load_runs(args: argparse.Namespace, store_path: Path) -> dict[RunConfig, RunResult]:
    """The stored runs made with the same settings (with ``--resume``), else none."""
    if not (args.resume and store_path.exists()):
        return {}
    saved = json.loads(store_path.read_text())
    if saved.get("signature") != run_signature(args):
        return {}
    results = {}
    for record in saved["runs"]:
        config = RunConfig(**record.pop("config"))
        results[config] = RunResult(config, **record)
    return results


def run_signature(args: argparse.Namespace) -> dict[str, Any]:
    return {k: getattr(args, k) for k in ("model", "epochs", "momentum", "quick")}


def choose_learning_rates(
    args: argparse.Namespace, results: dict[RunConfig, RunResult], store_path: Path
) -> dict[Norm, float]:
    """Per normalisation, the lr of ``--lr-grid`` with the best validation accuracy (largest
    batch size, first seed); ties go to the larger lr."""
    batch, seed = max(args.batch_sizes), args.seeds[0]
    grid = sorted(args.lr_grid, reverse=True)
    tuning = [RunConfig(norm, batch, seed, lr) for norm in NORMS for lr in grid]
    run_configs(tuning, args, results, store_path, "tuning")
    chosen = {}
    for norm in NORMS:
        scores = {lr: results[RunConfig(norm, batch, seed, lr)].val_acc for lr in grid}
        chosen[norm] = max(grid, key=lambda lr: scores[lr])
        console.print(
            f"{LABELS[norm]}: lr {chosen[norm]} (validation accuracy at batch {batch}: "
            + ", ".join(f"{lr} -> {acc:.4f}" for lr, acc in scores.items())
            + ")"
        )
    return chosen


def run_accuracy(
    args: argparse.Namespace, store_path: Path
) -> tuple[dict[RunConfig, RunResult], dict[Norm, float]]:
    """Choose each normalisation's lr, then train every (norm, batch size, seed) with it."""
    results = load_runs(args, store_path)
    rates = choose_learning_rates(args, results, store_path)
    configs = [
        RunConfig(norm, batch_size, seed, rates[norm])
        for batch_size in sorted(args.batch_sizes)  # the slow small batches first
        for seed in args.seeds
        for norm in NORMS
    ]
    run_configs(configs, args, results, store_path, "runs")
    return results, rates


def run_configs(
    configs: list[RunConfig],
    args: argparse.Namespace,
    results: dict[RunConfig, RunResult],
    store_path: Path,
    stage: str,
) -> None:
    """Train the ``configs`` missing from ``results`` in parallel processes; store each run."""
    todo = [c for c in configs if c not in results]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        args.workers, mp_context=context, initializer=_init_worker, initargs=(args.threads,)
    ) as pool:
        futures = [pool.submit(train_once, config, args) for config in todo]
        for done, future in enumerate(as_completed(futures), 1):
            result = future.result()
            results[result.config] = result
            runs = [asdict(r) for r in results.values()]
            store = {"signature": run_signature(args), "runs": runs}
            store_path.write_text(json.dumps(store, indent=1))
            c = result.config
            console.print(
                f"{stage} [{done}/{len(todo)}] {LABELS[c.norm]}, batch {c.batch_size}, seed "
                f"{c.seed}, lr {c.lr}: val {result.val_acc:.4f}, test {result.test_acc:.4f} "
                f"({result.seconds:.0f} s)"
            )


def accuracy_table(
    results: dict[RunConfig, RunResult], rates: dict[Norm, float], args: argparse.Namespace
) -> dict[Norm, dict[int, tuple[float, float]]]:
    """norm -> batch size -> (mean, std) of the test accuracy over seeds."""
    return {
        norm: {
            batch: mean_std(
                [results[RunConfig(norm, batch, seed, rates[norm])].test_acc for seed in args.seeds]
            )
            for batch in args.batch_sizes
        }
        for norm in NORMS
    }


def verdict(table: dict[Norm, dict[int, tuple[float, float]]], args: argparse.Namespace) -> str:
    """The claim in words: drops from the largest to the smallest batch, and the combinations."""
    large, small = max(args.batch_sizes), min(args.batch_sizes)

    def acc(norm: Norm, batch: int) -> float:
        return table[norm][batch][0]

    def drop(norm: Norm) -> float:
        return acc(norm, large) - acc(norm, small)

    pairs: tuple[tuple[Norm, Norm], ...] = (("wa_bn", "bn"), ("wa_gn", "gn"))
    combined = []
    for both, alone in pairs:
        below = [
            b for b in args.batch_sizes if acc(both, b) < max(acc(alone, b), acc("wa", b)) - 0.01
        ]
        where = f"below at batch {', '.join(map(str, below))}" if below else "at every batch size"
        combined.append(
            f"{LABELS[both]} within 0.01 of (or above) the better of {LABELS[alone]} and WA alone "
            f"{'everywhere' if not below else 'except'}: {where}"
        )
    wa_drop, bn_drop = drop("wa"), drop("bn")
    # A setting at chance level did not train (e.g. diverged): a drop involving it means nothing.
    failed = [(n, b) for n in NORMS for b in args.batch_sizes if acc(n, b) < FAILED_BELOW]
    meaningful = not any(n in ("wa", "bn") and b in (large, small) for n, b in failed)
    comparison = (
        f"WA alone drops {'less' if wa_drop < bn_drop else 'not less'} than BN "
        f"({wa_drop:+.4f} vs {bn_drop:+.4f})"
        if meaningful
        else f"WA alone vs BN drop ({wa_drop:+.4f} vs {bn_drop:+.4f}): NOT MEANINGFUL, an end "
        "point is at chance level"
    )
    failures = (
        " Settings at chance level (did not train): "
        + ", ".join(f"{LABELS[n]} at batch {b} ({acc(n, b):.4f})" for n, b in failed)
        + "."
        if failed
        else ""
    )
    return (
        f"Drop in mean test accuracy from batch {large} to {small}: "
        + ", ".join(f"{LABELS[n]} {drop(n):+.4f}" for n in NORMS)
        + f". {comparison}. "
        + "; ".join(combined)
        + "."
        + failures
    )


# --------------------------------------------------------------------------- output
Table = dict[Norm, dict[int, tuple[float, float]]]


def plot(table: Table, speed_rows: list[list[Any]] | None, path: Path, args: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if speed_rows else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.2), constrained_layout=True)
    left = axes[0] if panels == 2 else axes
    sizes = sorted(args.batch_sizes)
    for norm in NORMS:
        left.errorbar(
            sizes,
            [table[norm][b][0] for b in sizes],
            yerr=[table[norm][b][1] for b in sizes],
            marker="o",
            capsize=3,
            ls="--" if norm in ("bn", "gn") else "-",
            label=LABELS[norm],
        )
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(b) for b in sizes])
    left.set_xlabel("batch size (lr scaled with it, epochs fixed)")
    left.set_ylabel("test accuracy")
    left.set_title(f"(b) {args.model}, digits 32x32, epochs {args.epochs}, seeds {len(args.seeds)}")
    left.legend(fontsize=8)
    if speed_rows:
        right = axes[1]
        heights = [row[1] for row in speed_rows]
        right.bar(
            [row[0] for row in speed_rows],
            heights,
            color=["0.6", "tab:blue", "tab:cyan", "tab:orange"],
        )
        for index, row in enumerate(speed_rows):
            right.annotate(f"x{row[2]:.3f}", (index, row[1]), ha="center", va="bottom", fontsize=8)
        right.set_ylabel("median CPU ms per training step (x: ratio to plain)")
        right.set_title(
            f"(a) {args.speed_model}, batch {args.speed_batch_size}, {args.speed_threads} thread"
        )
    fig.suptitle("WeightAlign: accuracy across batch sizes, and step time", fontsize=10)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet10t", help="timm architecture of (b)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=[0.05, 0.02, 0.005],
        help="SGD learning rates at batch 64 to choose from, per normalisation",
    )
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 8, 2])
    parser.add_argument("--limit-train-batches", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--skip-speed", action="store_true", help="only run (b)")
    parser.add_argument("--resume", action="store_true", help="reuse matching per-run records")
    parser.add_argument("--quick", action="store_true", help="smoke run (~2-3 min)")
    speed.add_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds, args.limit_train_batches = 1, [0], 6
        args.lr_grid = args.lr_grid[:2]
        speed.quick_settings(args)
    if args.limit_train_batches > 1:  # a count of batches (1.0 is the whole epoch)
        args.limit_train_batches = int(args.limit_train_batches)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    started = time.perf_counter()
    runs_dir = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{NAME}[/]: (a) {args.speed_model} speed, (b) {args.model} accuracy")
    speed_rows = None if args.skip_speed else speed.run(args)[0]
    saved_speed = (RESULTS_DIR / "quick" if args.quick else RESULTS_DIR) / f"{speed.NAME}.json"
    if speed_rows is None and saved_speed.exists():  # plot the last measurement
        speed_rows = json.loads(saved_speed.read_text())["rows"]
    results, rates = run_accuracy(args, runs_dir / f"{NAME}.runs.json")
    table = accuracy_table(results, rates, args)
    sizes = sorted(args.batch_sizes, reverse=True)
    columns = ["normalisation", "lr at batch 64", *(f"test acc, batch {b}" for b in sizes)]
    columns.append(f"drop {sizes[0]} -> {sizes[-1]}")
    rows = [
        [
            LABELS[n],
            rates[n],
            *(f"{table[n][b][0]:.4f} ± {table[n][b][1]:.4f}" for b in sizes),
            round(table[n][sizes[0]][0] - table[n][sizes[-1]][0], 4),
        ]
        for n in NORMS
    ]
    summary = verdict(table, args)
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes",
        "data": "scikit-learn digits, 32x32 RGB, stratified 70/15/15 split (seeded), drop_last",
        "optimizer": f"SGD(lr * B/64, momentum={args.momentum}), cosine over epochs; lr per "
        f"normalisation from {sorted(args.lr_grid, reverse=True)} by validation accuracy at batch "
        f"{max(args.batch_sizes)}, seed {args.seeds[0]}",
        "learning_rates": {LABELS[n]: rates[n] for n in NORMS},
        "epochs": args.epochs,
        "limit_train_batches": args.limit_train_batches,
        "batch_sizes": sizes,
        "seeds": args.seeds,
        "weight_align": "callbacks.WeightAlign() defaults (gain sqrt(2), eps 1e-5, convs)",
        "quick": args.quick,
        "minutes_this_invocation": round((time.perf_counter() - started) / 60, 1),
        "run_seconds_total": round(sum(r.seconds for r in results.values())),
        "tuning_runs": len(args.lr_grid) * len(NORMS),
    }
    notes = "Test accuracy after the last epoch, mean ± std over seeds. " + summary
    path = write_results(
        NAME, settings=settings, columns=columns, rows=rows, notes=notes, quick=args.quick
    )
    figure = plot_path(NAME, quick=args.quick)
    plot(table, speed_rows, figure, args)
    console.print(summary)
    console.print(f"wrote {shown(path)}, {shown(figure)}")


if __name__ == "__main__":
    main()
