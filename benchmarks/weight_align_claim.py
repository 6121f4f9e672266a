"""Test the WeightAlign claim on Fashion-MNIST: accuracy that holds at tiny batch sizes.

Claim (Shi et al., ICPR 2020): WeightAlign normalises without sample statistics, so its accuracy
is stable from large to tiny batches (64 -> 2) where BatchNorm degrades, and combined with BN or
GN it is not worse than either alone.

Protocol. A timm ``resnet10t`` (random init; resnet18's step cost at batch 2 does not fit the
budget) on Fashion-MNIST at 32x32 (``FashionMNISTDataModule``, grey repeated to 3 channels), at
batch sizes 64, 8 and 2, with five normalisations: BatchNorm (the backbone as built), GroupNorm
(every BatchNorm2d swapped for GroupNorm with gcd(C, 32) groups, affine parameters copied),
WeightAlign alone (every BatchNorm2d replaced by Identity), WA+BN and WA+GN (the ``WeightAlign``
callback, default settings). Every run sees the same training images the same number of times
whatever its batch size (a seeded, stratified subset of the 55,000 training images; incomplete
last batches dropped: a batch of one breaks BatchNorm on the 1x1 maps of the last stage). SGD with
momentum and a per-step cosine schedule. Each normalisation gets its own learning rate: the one of
``--lr-grid`` with the best *validation* accuracy (the seeded 5,000-image split) at batch 64 and
the first seed; at a batch size ``B`` it is scaled linearly (``lr * B / 64``). Test accuracy on
the full 10,000-image test set after the last step (evaluated in batches of 500: BN uses its
running statistics, so the evaluation batch changes nothing). The seed sets the split, the subset,
the data order and the initial weights, so runs are paired by seed.

Verdicts (``_protocol.compare``, paired by seed, 95% t-interval; margin ``--margin``, default 0.01
= 100 test images, for the "not worse" claims):

- WA alone beats BN at every batch size below the largest (8 and 2);
- WA alone is not worse than BN at the largest batch size (64);
- WA alone loses less accuracy than BN from batch 64 to batch 2 (per-seed drops compared);
- WA alone at batch 2 is not worse than WA alone at batch 64 (stable);
- WA+BN is not worse than BN, nor than WA alone; WA+GN not worse than GN, nor than WA alone; each
  at batch 64 and at batch 2.

Budget (default): 5,000 training images, 1 epoch, at each of the 3 batch sizes, 5 normalisations,
3 seeds (45 runs) plus 10 further tuning runs (3 learning rates x 5 normalisations at batch 64,
seed 0; the chosen one is reused); 2 worker processes x 1 thread. Estimated ~20 min on 2 idle CPU
cores (batch 2 costs ~7x batch 64 per image, and takes about two thirds of it). With 5,000 images
seen once the models are far from converged: the baseline sits below the published band for
small CNNs (0.90-0.94); ``--full`` (a GPU) uses all 55,000 images for 2 epochs (untimed; batch 2
is launch-bound on a GPU, so run several ``--workers``).

The speed comparison with timm's ``StdConv2d``/``ScaledStdConv2d`` is ``weight_align_speed.py``
(``--speed`` runs it from here as well; off by default, so this run leaves its results alone).

Writes ``benchmarks/results/weight_align_claim.json`` (table and verdicts) and the plot
``docs/assets/results/weight_align_claim.png``; per-run records go to
``benchmarks/results/weight_align_claim.runs.json`` (``--resume`` reuses the matching ones).

Usage::

    python benchmarks/weight_align_claim.py           # defaults (~20 min on 2 idle CPU cores)
    python benchmarks/weight_align_claim.py --quick --workers 1   # smoke run (~2 min)
    python benchmarks/weight_align_claim.py --full --accelerator gpu --workers 4
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache, partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import weight_align_speed as speed
from _common import (
    RESULTS_DIR,
    console,
    init_worker,
    mean_std,
    plot_path,
    quiet_lightning,
    run_missing,
    shown,
    trainer_kwargs,
    write_results,
)
from _protocol import (
    Comparison,
    add_protocol_arguments,
    check_protocol_arguments,
    compare,
    device_settings,
    verdict_record,
)
from torch import nn

from lightning_dnn_tricks.callbacks import WeightAlign
from lightning_dnn_tricks.data import FashionMNISTDataModule
from lightning_dnn_tricks.models import TimmClassifier
from lightning_dnn_tricks.nn import LayerSelection, replace_modules

NAME = "weight_align_claim"
Norm = Literal["bn", "gn", "wa", "wa_bn", "wa_gn"]
NORMS: tuple[Norm, ...] = ("bn", "gn", "wa", "wa_bn", "wa_gn")
#: Mean test accuracy below this (chance is 0.1 on 10 classes) means the setting did not train.
FAILED_BELOW = 0.2
LABELS = {"bn": "BN", "gn": "GN", "wa": "WA alone", "wa_bn": "WA + BN", "wa_gn": "WA + GN"}
BATCH_NORMS = LayerSelection(types=(nn.BatchNorm2d,))
#: The learning rates of ``--lr-grid`` are for this batch size (scaled linearly to the others).
REFERENCE_BATCH = 64
#: ``--full``: all 55,000 training images, this many epochs.
FULL_EPOCHS = 2


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


# --------------------------------------------------------------------------- runs
@dataclass(frozen=True)
class RunConfig:
    norm: Norm
    batch_size: int
    seed: int
    lr: float  # at batch size REFERENCE_BATCH


@dataclass(frozen=True)
class RunResult:
    config: RunConfig
    val_acc: float
    test_acc: float
    seconds: float


@lru_cache(maxsize=4)
def fashion_mnist(seed: int, train_subset: int | None, data_dir: str | None) -> Any:
    """The set-up data module of ``seed`` (built once per worker; the batch size is set per run)."""
    data = FashionMNISTDataModule(
        data_dir=data_dir,
        batch_size=REFERENCE_BATCH,
        image_size=32,
        channels=3,
        train_subset=train_subset,
        seed=seed,
        drop_last=True,
    )
    data.setup("fit")
    return data


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    """Train one model on Fashion-MNIST and return its validation and test accuracy."""
    start = time.perf_counter()
    data = fashion_mnist(config.seed, args.train_subset, args.data_dir)
    data.batch_size = config.batch_size
    batches = len(data.splits.train) // config.batch_size
    if args.limit_train_batches is not None:
        batches = min(batches, args.limit_train_batches)
    pl.seed_everything(config.seed, verbose=False)
    model = TimmClassifier(
        args.model,
        num_classes=10,
        in_chans=3,
        optimizer=partial(
            torch.optim.SGD,
            lr=config.lr * config.batch_size / REFERENCE_BATCH,
            momentum=args.momentum,
        ),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=args.epochs * batches),
        scheduler_interval="step",
    )
    swap_norms(model.model, config.norm)
    callbacks: list[pl.Callback] = [WeightAlign()] if config.norm.startswith("wa") else []
    devices = trainer_kwargs(args.accelerator, args.devices)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        limit_val_batches=0,
        limit_train_batches=batches,
        **devices,
    )
    trainer.fit(model, datamodule=data)
    data.batch_size = args.eval_batch_size  # evaluation only: BN uses its running statistics
    evaluator = pl.Trainer(  # the fit's Trainer skips validation
        limit_val_batches=args.limit_eval_batches, limit_test_batches=args.limit_eval_batches,
        **devices,
    )  # fmt: skip
    val_acc = float(evaluator.validate(model, datamodule=data, verbose=False)[0]["val/acc"])
    test_acc = float(evaluator.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    return RunResult(config, val_acc, test_acc, time.perf_counter() - start)


def run_signature(args: argparse.Namespace) -> dict[str, Any]:
    keys = ("model", "epochs", "momentum", "train_subset", "limit_train_batches")
    signature = {k: getattr(args, k) for k in keys}
    signature.update(limit_eval_batches=args.limit_eval_batches, accelerator=args.accelerator)
    return signature


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


def run_configs(
    configs: list[RunConfig],
    args: argparse.Namespace,
    results: dict[RunConfig, RunResult],
    store_path: Path,
    stage: str,
) -> None:
    """Train the ``configs`` missing from ``results`` (in ``--workers`` processes); store each."""

    def save(runs: dict[RunConfig, RunResult]) -> None:
        store = {"signature": run_signature(args), "runs": [asdict(r) for r in runs.values()]}
        store_path.write_text(json.dumps(store, indent=1))

    def describe(result: RunResult) -> str:
        c = result.config
        return (
            f"{LABELS[c.norm]}, batch {c.batch_size}, seed "
            f"{c.seed}, lr {c.lr}: val {result.val_acc:.4f}, test {result.test_acc:.4f} "
            f"({result.seconds:.0f} s)"
        )

    run_missing(
        partial(train_once, args=args), configs, results, save=save, describe=describe,
        stage=stage, workers=args.workers, threads=args.threads,
    )  # fmt: skip


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


# --------------------------------------------------------------------------- statistics
Accuracies = dict[Norm, dict[int, dict[int, float]]]  # norm -> batch -> seed -> test accuracy


def accuracies(
    results: dict[RunConfig, RunResult], rates: dict[Norm, float], args: argparse.Namespace
) -> Accuracies:
    return {
        norm: {
            batch: {
                seed: results[RunConfig(norm, batch, seed, rates[norm])].test_acc
                for seed in args.seeds
            }
            for batch in args.batch_sizes
        }
        for norm in NORMS
    }


def claims(acc: Accuracies, args: argparse.Namespace, metric: str) -> list[dict[str, Any]]:
    """Every claim's verdict (paired by seed), as ``verdict_record`` entries."""
    large, small = max(args.batch_sizes), min(args.batch_sizes)
    margin = args.margin
    within = f"margin {margin:g}"
    records: list[dict[str, Any]] = []

    def add(claim: str, comparison: Comparison, what: str = metric) -> None:
        console.print(comparison.describe())
        records.append(verdict_record(claim, comparison, metric=what))

    def arm(norm: Norm, batch: int) -> str:
        return f"{LABELS[norm]}, batch {batch}"

    for batch in sorted(args.batch_sizes):
        if batch == large:
            continue
        add(
            f"WA alone beats BN at batch {batch}",
            compare(arm("wa", batch), acc["wa"][batch], arm("bn", batch), acc["bn"][batch]),
        )
    add(
        f"WA alone is not worse than BN at batch {large} ({within})",
        compare(
            arm("wa", large), acc["wa"][large], arm("bn", large), acc["bn"][large],
            claim="not_worse", margin=margin,
        ),
    )  # fmt: skip
    drops = {n: {s: acc[n][large][s] - acc[n][small][s] for s in args.seeds} for n in NORMS}
    add(
        f"WA alone loses less accuracy than BN from batch {large} to {small}",
        compare(
            f"WA alone, drop {large} -> {small}", drops["wa"],
            f"BN, drop {large} -> {small}", drops["bn"], higher_is_better=False,
        ),
        what=f"drop in test accuracy from batch {large} to {small} (lower is better)",
    )  # fmt: skip
    add(
        f"WA alone is stable: batch {small} not worse than batch {large} ({within})",
        compare(
            arm("wa", small), acc["wa"][small], arm("wa", large), acc["wa"][large],
            claim="not_worse", margin=margin,
        ),
    )  # fmt: skip
    pairs: tuple[tuple[Norm, Norm], ...] = (("wa_bn", "bn"), ("wa_gn", "gn"))
    for both, alone in pairs:
        for batch in (large, small):
            others: tuple[Norm, Norm] = (alone, "wa")
            for other in others:
                add(
                    f"{LABELS[both]} is not worse than {LABELS[other]} at batch {batch} "
                    f"({within})",
                    compare(
                        arm(both, batch), acc[both][batch], arm(other, batch), acc[other][batch],
                        claim="not_worse", margin=margin,
                    ),
                )  # fmt: skip
    return records


def differences_to_bn(acc: Accuracies, args: argparse.Namespace) -> dict[Norm, list[Comparison]]:
    """Per normalisation and batch size (ascending), the paired comparison with BN (plot)."""
    return {
        norm: [
            compare(LABELS[norm], acc[norm][b], "BN", acc["bn"][b])
            for b in sorted(args.batch_sizes)
        ]
        for norm in NORMS
        if norm != "bn"
    }


# --------------------------------------------------------------------------- output
def plot(acc: Accuracies, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(args.batch_sizes)
    paired = len(args.seeds) >= 3
    fig, axes = plt.subplots(
        1, 2 if paired else 1, figsize=(11 if paired else 5.5, 4.2), constrained_layout=True
    )
    left = axes[0] if paired else axes
    palette = ("0.3", "tab:green", "tab:blue", "tab:orange", "tab:purple")
    colors = dict(zip(NORMS, palette, strict=True))
    for norm in NORMS:
        stats = [mean_std(list(acc[norm][b].values())) for b in sizes]
        left.errorbar(
            sizes,
            [m for m, _ in stats],
            yerr=[s for _, s in stats],
            marker="o",
            capsize=3,
            color=colors[norm],
            ls="--" if norm in ("bn", "gn") else "-",
            lw=2.5 if norm == "bn" else 1.5,
            label=LABELS[norm] + (" (baseline)" if norm == "bn" else ""),
        )
    left.set_xscale("log", base=2)
    left.set_xticks(sizes, [str(b) for b in sizes])
    left.set_xlabel("batch size (lr scaled with it; same images seen)")
    left.set_ylabel("test accuracy (mean ± std over seeds)")
    left.legend(fontsize=8)
    if paired:
        right = axes[1]
        right.axhline(0.0, color=colors["bn"], ls="--", lw=2.5, label="BN (baseline)")
        offsets = dict(zip(NORMS[1:], (0.94, 0.97, 1.03, 1.06), strict=True))
        for norm, comparisons in differences_to_bn(acc, args).items():
            right.errorbar(
                [b * offsets[norm] for b in sizes],
                [c.difference for c in comparisons],
                yerr=[
                    [c.difference - c.low for c in comparisons],
                    [c.high - c.difference for c in comparisons],
                ],
                marker="o",
                capsize=3,
                color=colors[norm],
                ls="--" if norm == "gn" else "-",
                label=LABELS[norm],
            )
        right.set_xscale("log", base=2)
        right.set_xticks(sizes, [str(b) for b in sizes])
        right.set_xlabel("batch size")
        right.set_ylabel("test accuracy minus BN's (paired by seed, 95% CI)")
        right.legend(fontsize=8)
    images = f"{args.n_train:,} training images x {args.epochs} epoch{'s' * (args.epochs > 1)}"
    fig.suptitle(
        f"WeightAlign vs BN/GN: timm {args.model}, Fashion-MNIST 32x32 ({images}), "
        f"seeds {', '.join(map(str, args.seeds))}",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet10t", help="timm architecture")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--train-subset", type=int, default=5000, help="training images (of 55,000; stratified)"
    )
    parser.add_argument(
        "--lr-grid",
        type=float,
        nargs="+",
        default=[0.1, 0.03, 0.01],
        help=f"SGD learning rates at batch {REFERENCE_BATCH} to choose from, per normalisation",
    )
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 8, 2])
    parser.add_argument(
        "--margin", type=float, default=0.01, help="accuracy margin of the 'not worse' claims"
    )
    parser.add_argument("--eval-batch-size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument(
        "--speed", action="store_true", help="also run weight_align_speed.py (its own JSON)"
    )
    parser.add_argument("--resume", action="store_true", help="reuse matching per-run records")
    parser.add_argument("--quick", action="store_true", help="smoke run (~2 min, --workers 1)")
    add_protocol_arguments(parser)
    speed.add_arguments(parser)
    args = parser.parse_args(argv)
    check_protocol_arguments(args)
    args.limit_train_batches = None  # whole epochs
    args.limit_eval_batches = 1.0  # the whole 5,000 validation and 10,000 test images
    if args.full:
        args.train_subset, args.epochs = None, FULL_EPOCHS
    if args.quick:
        args.epochs, args.limit_train_batches, args.limit_eval_batches = 1, 3, 1  # 1 batch
        args.train_subset = min(args.train_subset or 1000, 1000)
        args.lr_grid = args.lr_grid[:2]
        speed.quick_settings(args)
    args.n_train = args.train_subset or 55000
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.workers <= 1:
        init_worker(args.threads)
    started = time.perf_counter()
    runs_dir = RESULTS_DIR / "quick" if args.quick else RESULTS_DIR
    runs_dir.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]{NAME}[/]: timm {args.model} on Fashion-MNIST, {len(args.seeds)} seeds")
    if args.speed:
        speed.run(args)
    results, rates = run_accuracy(args, runs_dir / f"{NAME}.runs.json")
    acc = accuracies(results, rates, args)
    sizes = sorted(args.batch_sizes, reverse=True)
    columns = ["normalisation", f"lr at batch {REFERENCE_BATCH}"]
    columns += [f"test acc, batch {b}" for b in sizes] + [f"drop {sizes[0]} -> {sizes[-1]}"]
    table = {n: {b: mean_std(list(acc[n][b].values())) for b in sizes} for n in NORMS}
    rows = [
        [
            LABELS[n],
            rates[n],
            *(f"{table[n][b][0]:.4f} ± {table[n][b][1]:.4f}" for b in sizes),
            round(table[n][sizes[0]][0] - table[n][sizes[-1]][0], 4),
        ]
        for n in NORMS
    ]
    test_images = f"{args.eval_batch_size * args.limit_eval_batches:,}" if args.quick else "10,000"
    metric = f"test accuracy ({test_images} images)"
    verdicts = claims(acc, args, metric) if len(args.seeds) >= 3 else []
    failed = [
        f"{LABELS[n]} at batch {b} ({table[n][b][0]:.4f})"
        for n in NORMS
        for b in sizes
        if table[n][b][0] < FAILED_BELOW
    ]
    bn_large = table["bn"][sizes[0]][0]
    notes = (
        f"Test accuracy ({test_images} images) after the last step, mean ± std over seeds "
        f"{args.seeds}; every run sees the same {args.n_train:,} training images "
        f"{args.epochs} time(s) whatever its batch size. BN's test accuracy at batch "
        f"{sizes[0]}: {bn_large:.4f} (published band for small CNNs on Fashion-MNIST: about "
        f"0.90-0.94{'' if bn_large >= 0.9 else '; below it: this budget is far from converged'})."
        + (f" Settings at chance level (did not train): {', '.join(failed)}." if failed else "")
        + " Verdicts: paired by seed, 95% t-interval of the mean difference."
    )
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes, 3 input channels",
        "data": "Fashion-MNIST (FashionMNISTDataModule), 32x32 (zero-padded), grey repeated to "
        "3 channels; seeded stratified 5,000-image validation split; full 10,000-image test set; "
        "drop_last",
        "train_subset": args.n_train,
        "epochs": args.epochs,
        "training_images_seen_per_run": args.n_train * args.epochs,
        "limit_train_batches": args.limit_train_batches,
        "limit_eval_batches": args.limit_eval_batches,
        "optimizer": f"SGD(lr * B/{REFERENCE_BATCH}, momentum={args.momentum}), cosine per step; "
        f"lr per normalisation from {sorted(args.lr_grid, reverse=True)} by validation accuracy "
        f"at batch {max(args.batch_sizes)}, seed {args.seeds[0]}",
        "learning_rates": {LABELS[n]: rates[n] for n in NORMS},
        "batch_sizes": sizes,
        "seeds": args.seeds,
        "not_worse_margin": args.margin,
        "weight_align": "callbacks.WeightAlign() defaults (gain sqrt(2), eps 1e-5, convs)",
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "quick": args.quick,
        "full": args.full,
        **device_settings(args),
        "minutes_this_invocation": round((time.perf_counter() - started) / 60, 1),
        "run_seconds_total": round(sum(r.seconds for r in results.values())),
        "tuning_runs": len(args.lr_grid) * len(NORMS),
    }
    path = write_results(
        NAME,
        settings=settings,
        columns=columns,
        rows=rows,
        notes=notes,
        quick=args.quick,
        verdicts=verdicts,
    )
    figure = plot_path(NAME, quick=args.quick)
    plot(acc, args, figure)
    console.print(notes)
    console.print(f"wrote {shown(path)}, {shown(figure)}")


if __name__ == "__main__":
    main()
