"""Test the Norm Loss claims against weight decay on Fashion-MNIST, under SGD-momentum and AdamW.

Claims (Georgiou et al., ICPR 2020): Norm Loss reaches accuracy competitive with tuned weight
decay, and is less sensitive to the batch size and to the regularisation factor.

Protocol: a timm ``resnet10t`` (random init) on Fashion-MNIST padded to 32x32 and repeated to 3
channels (``FashionMNISTDataModule``; a stratified, seeded training subset of ``--train-subset``
images, the seeded 5,000-image validation split, the full 10,000-image test set), trained for
``--epochs`` epochs with a per-step cosine schedule, under two optimizers:

- ``sgd``: SGD(lr ``--sgd-lr``, momentum ``--momentum``), weight decay = coupled L2 in SGD;
- ``adamw``: AdamW(lr ``--adamw-lr``), weight decay = AdamW's decoupled decay.

Under each optimizer three regularisers act on the same tensors (every conv/linear weight, the
classifier included; biases and normalisation parameters never): **weight decay** (the baseline),
**Norm Loss** in its gradient form (``NormLoss(strength=s)``, the library default) and Norm Loss in
its **decoupled** form (``NormLoss(strength=s, decoupled=True)``), both with ``reduction="mean"``
and the optimizer's weight decay 0. No regularisation runs once per optimizer as a reference.

(a) Strength sweep at ``--base-batch-size`` (128): every regulariser over its own grid of three
    values two decades apart (``--sgd-weight-decays``, ``--adamw-weight-decays``,
    ``--norm-strengths``; the Norm Loss grid contains the library's default strength). The
    strength of each (optimizer, regulariser) is the one with the best mean *validation*
    accuracy over the seeds; test accuracy is only read for reporting.
(b) Batch sizes ``--batch-sizes`` (32/128/512) at the chosen strength, learning rate and epochs
    fixed (so a larger batch takes fewer steps). The base batch size reuses the runs of (a).

Verdicts (paired by seed, 95% t-interval; ``_protocol.compare``), for each Norm Loss form under
each optimizer against that optimizer's weight decay:

1. competitive: test accuracy at the chosen strengths, ``not_worse`` with margin ``--margin``;
2. less sensitive to the batch size: per seed, the spread (max - min) of test accuracy over the
   batch sizes, lower is better (``better``);
3. less sensitive to the factor: per seed, the spread of test accuracy over the three grid points
   of the sweep (each grid spans four decades), lower is better. It depends on where each grid
   sits: read it with the grids.

Budget of the default run (2 worker processes x 1 thread): a 5,000-image training subset, 2
epochs (80 steps at batch 128), 3 seeds, 96 runs (54 sweep runs, 6 without regularisation, 36 at
batch 32 and 512); evaluation is the full 10,000 test images (and the 5,000 validation images for
the sweep runs), in batches of 128. Measured throughput (resnet10t, 1 thread: about 700 train
and 1,850 evaluation images/s) puts it at about 20 minutes on 2 idle CPU cores. ``--full`` (GPU
scale) trains on all 55,000 images for 10 epochs.

Writes ``benchmarks/results/norm_loss_claim.json`` (with the verdicts) and the plot
``docs/assets/results/norm_loss_claim.png``; per-run records go to
``benchmarks/results/norm_loss_claim.runs.json`` (``--resume`` reuses the matching ones).

Usage::

    python benchmarks/norm_loss_claim.py           # default (~20 min on 2 CPU cores)
    python benchmarks/norm_loss_claim.py --quick   # smoke run (~2 min, --workers 1)
    python benchmarks/norm_loss_claim.py --full --accelerator gpu   # GPU scale
"""

from __future__ import annotations

import argparse
import functools
import inspect
import itertools
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from _common import (
    console,
    init_worker,
    mean_std,
    overhead_summary,
    plot_path,
    progress,
    results_dir,
    run_parallel,
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
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from lightning_dnn_tricks.callbacks import NormLoss
from lightning_dnn_tricks.data import FashionMNISTDataModule
from lightning_dnn_tricks.data.base import DatasetSplits
from lightning_dnn_tricks.models import TimmClassifier

NAME = "norm_loss_claim"
Optimizer = Literal["sgd", "adamw"]
Regulariser = Literal["none", "weight_decay", "norm_loss", "norm_loss_decoupled"]
OPTIMIZERS: tuple[Optimizer, ...] = ("sgd", "adamw")
REGULARISED: tuple[Regulariser, ...] = ("weight_decay", "norm_loss", "norm_loss_decoupled")
NORM_LOSSES: tuple[Regulariser, ...] = ("norm_loss", "norm_loss_decoupled")
OPTIMIZER_LABELS = {"sgd": "SGD-m", "adamw": "AdamW"}
LABELS = {
    "none": "no regularisation",
    "weight_decay": "weight decay",
    "norm_loss": "Norm Loss",
    "norm_loss_decoupled": "Norm Loss decoupled",
}
#: The library's default strength, which the Norm Loss grid must contain.
DEFAULT_STRENGTH = float(inspect.signature(NormLoss).parameters["strength"].default)
EVAL_BATCH = 128
#: Short names of the three claims, in the order ``verdicts`` returns them per Norm Loss form.
CLAIM_TAGS = ("(1) accuracy:", "(2) batch-size spread:", "(3) factor spread:")
FULL_EPOCHS = 10


@dataclass(frozen=True)
class RunConfig:
    """One training run."""

    optimizer: Optimizer
    regulariser: Regulariser
    strength: float
    batch_size: int
    seed: int
    validate: bool  # the sweep's runs are evaluated on validation too (for the selection)


@dataclass(frozen=True)
class RunResult:
    """The outcome of one training run."""

    config: RunConfig
    val_acc: float | None
    test_acc: float
    seconds: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(parser)
    parser.add_argument("--model", default="resnet10t", help="timm architecture")
    parser.add_argument("--epochs", type=int, default=None, help=f"default 2, {FULL_EPOCHS} --full")
    parser.add_argument(
        "--train-subset", type=int, default=5000, help="training images (ignored with --full)"
    )
    parser.add_argument("--sgd-lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--adamw-lr", type=float, default=1e-3)
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    parser.add_argument("--base-batch-size", type=int, default=128, help="batch size of (a)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 512])
    parser.add_argument("--sgd-weight-decays", type=float, nargs="+", default=[5e-6, 5e-4, 5e-2])
    parser.add_argument("--adamw-weight-decays", type=float, nargs="+", default=[5e-4, 5e-2, 5.0])
    parser.add_argument(
        "--norm-strengths",
        type=float,
        nargs="+",
        default=[5e-3, 0.5, 50.0],
        help="Norm Loss grid (both forms, both optimizers); must contain the library default",
    )
    parser.add_argument("--margin", type=float, default=0.01, help="'competitive' margin")
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1 is robust on shared CPUs; accuracy does not depend on it)",
    )
    parser.add_argument("--resume", action="store_true", help="reuse matching per-run records")
    parser.add_argument("--quick", action="store_true", help="smoke run (~2 min, --workers 1)")
    args = parser.parse_args(argv)
    args.eval_limit = None
    if args.epochs is None:
        args.epochs = FULL_EPOCHS if args.full else 2
    if args.full:
        args.train_subset = None
    if args.quick:  # every code path, tiny: 200 images, 1 epoch, 500 evaluation images
        args.epochs, args.train_subset, args.eval_limit = 1, 200, 500
        args.sgd_weight_decays, args.adamw_weight_decays = [5e-4, 5e-2], [5e-2, 5.0]
        args.norm_strengths = [5e-3, 0.5]
        args.batch_sizes = [64, 128]
    if args.base_batch_size not in args.batch_sizes:
        args.batch_sizes = sorted({*args.batch_sizes, args.base_batch_size})
    return args


def grid(args: argparse.Namespace, optimizer: Optimizer, regulariser: Regulariser) -> list[float]:
    """The strengths swept for ``regulariser`` under ``optimizer``."""
    if regulariser == "none":
        return [0.0]
    if regulariser == "weight_decay":
        return list(args.sgd_weight_decays if optimizer == "sgd" else args.adamw_weight_decays)
    return list(args.norm_strengths)


# --------------------------------------------------------------------------- one run
def param_groups(params: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights (dim >= 2) only: the tensors Norm Loss regularises."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_optimizer(
    params: Any, *, name: Optimizer, args: argparse.Namespace, weight_decay: float
) -> torch.optim.Optimizer:
    groups = param_groups(params, weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=args.sgd_lr, momentum=args.momentum)
    return torch.optim.AdamW(groups, lr=args.adamw_lr)


class CachedFashionMNIST(FashionMNISTDataModule):
    """``FashionMNISTDataModule`` whose splits are built once per process and seed.

    The splits depend on the seed and the subset only, not on the batch size, so the runs of one
    worker share them (reading and padding the 70,000 images costs about 2 s per run).
    """

    def build_datasets(self) -> DatasetSplits:
        return _splits(self.data_dir, self.seed, self.train_subset)


@functools.cache
def _splits(data_dir: str | None, seed: int, train_subset: int | None) -> DatasetSplits:
    data = FashionMNISTDataModule(
        data_dir=data_dir, image_size=32, channels=3, train_subset=train_subset, seed=seed
    )
    return data.build_datasets()


def uses_cuda(args: argparse.Namespace) -> bool:
    return args.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()


@torch.inference_mode()
def accuracy(model: torch.nn.Module, dataset: Any, limit: int | None, device: str) -> float:
    """Top-1 accuracy of ``model`` (in eval mode) on ``dataset`` (its first ``limit`` items)."""
    model.eval()
    correct = total = 0
    for index, (x, y) in enumerate(DataLoader(dataset, batch_size=EVAL_BATCH, shuffle=False)):
        if limit is not None and index * EVAL_BATCH >= limit:
            break
        x, y = x.contiguous().to(device), y.to(device)
        correct += int((model(x).argmax(dim=1) == y).sum())
        total += len(y)
    return correct / total


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    """Train one model; return its final test accuracy (and validation accuracy if asked)."""
    start = time.perf_counter()
    data = CachedFashionMNIST(
        data_dir=args.data_dir,
        batch_size=config.batch_size,
        image_size=32,
        channels=3,
        train_subset=args.train_subset,
        seed=config.seed,
    )
    steps = -(-len(data.splits.train) // config.batch_size) * args.epochs
    pl.seed_everything(config.seed, verbose=False)  # same initial weights for every arm
    decay = config.strength if config.regulariser == "weight_decay" else 0.0
    model = TimmClassifier(
        args.model,
        num_classes=10,
        in_chans=3,
        optimizer=partial(build_optimizer, name=config.optimizer, args=args, weight_decay=decay),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=steps),
        scheduler_interval="step",
    )
    callbacks: list[Callback] = []
    if config.regulariser in NORM_LOSSES:
        decoupled = config.regulariser == "norm_loss_decoupled"
        callbacks.append(NormLoss(strength=config.strength, decoupled=decoupled))
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        callbacks=callbacks,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        **trainer_kwargs(args.accelerator, args.devices),
    )
    trainer.fit(model, datamodule=data)
    device = "cuda" if uses_cuda(args) else "cpu"
    model.to(device)
    val = accuracy(model, data.splits.val, args.eval_limit, device) if config.validate else None
    test = accuracy(model, data.splits.test, args.eval_limit, device)
    return RunResult(config, val, test, time.perf_counter() - start)


# --------------------------------------------------------------------------- run records
class RunStore:
    """Per-run records in ``NAME.runs.json``, keyed by the settings that change the outcome."""

    def __init__(self, path: Path, signature: dict[str, Any], resume: bool) -> None:
        self.path = path
        self.signature = signature
        self.results: dict[RunConfig, RunResult] = {}
        if resume and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("signature") == signature:
                for record in saved["runs"]:
                    config = RunConfig(**record["config"])
                    self.results[config] = RunResult(
                        config, record["val_acc"], record["test_acc"], record["seconds"]
                    )
            else:
                console.print("[yellow]--resume: saved runs have other settings; ignored[/]")

    def add(self, result: RunResult) -> None:
        self.results[result.config] = result
        runs = [asdict(result) for result in self.results.values()]
        self.path.write_text(json.dumps({"signature": self.signature, "runs": runs}, indent=1))

    def test(self, config: RunConfig) -> float:
        return self.results[config].test_acc


def run_all(
    configs: Sequence[RunConfig], store: RunStore, args: argparse.Namespace, title: str
) -> None:
    """Train every config missing from ``store`` (in ``args.workers`` processes), with progress."""
    todo = [config for config in dict.fromkeys(configs) if config not in store.results]
    todo.sort(key=lambda config: config.batch_size)  # the slowest (small batches) first
    if not todo:
        return
    with progress() as bar:
        task = bar.add_task(title, total=len(todo))

        def record(result: RunResult) -> None:
            store.add(result)
            val = "" if result.val_acc is None else f"val {result.val_acc:.4f}, "
            bar.console.print(
                f"{describe(result.config)}: {val}test {result.test_acc:.4f} "
                f"({result.seconds:.0f} s)"
            )
            bar.advance(task)

        train = partial(train_once, args=args)
        run_parallel(train, todo, record, workers=args.workers, threads=args.threads)


def describe(config: RunConfig) -> str:
    strength = "" if config.regulariser == "none" else f" {config.strength:g}"
    return (
        f"{OPTIMIZER_LABELS[config.optimizer]} {config.regulariser}{strength}, "
        f"batch {config.batch_size}, seed {config.seed}"
    )


def sweep_configs(args: argparse.Namespace) -> list[RunConfig]:
    return [
        RunConfig(optimizer, regulariser, strength, args.base_batch_size, seed, True)
        for optimizer in args.optimizers
        for regulariser in REGULARISED
        for strength in grid(args, optimizer, regulariser)
        for seed in args.seeds
    ]


def reference_configs(args: argparse.Namespace) -> list[RunConfig]:
    return [
        RunConfig(optimizer, "none", 0.0, args.base_batch_size, seed, False)
        for optimizer in args.optimizers
        for seed in args.seeds
    ]


Family = tuple[Optimizer, Regulariser]


def batch_config(
    args: argparse.Namespace, family: Family, strength: float, batch_size: int, seed: int
) -> RunConfig:
    """The run of ``family`` at ``strength`` and ``batch_size`` (the sweep's at the base size)."""
    optimizer, regulariser = family
    validate = batch_size == args.base_batch_size
    return RunConfig(optimizer, regulariser, strength, batch_size, seed, validate)


# --------------------------------------------------------------------------- summaries
@dataclass(frozen=True)
class Summary:
    """Accuracy over seeds of one setting."""

    optimizer: Optimizer
    regulariser: Regulariser
    strength: float
    batch_size: int
    test_mean: float
    test_std: float
    val_mean: float | None
    seeds: int


def summarise(store: RunStore, configs: Sequence[RunConfig]) -> Summary:
    results = [store.results[config] for config in configs]
    first = configs[0]
    test_mean, test_std = mean_std([r.test_acc for r in results])
    vals = [r.val_acc for r in results if r.val_acc is not None]
    val_mean = mean_std(vals)[0] if len(vals) == len(results) else None
    return Summary(
        first.optimizer, first.regulariser, first.strength, first.batch_size,
        test_mean, test_std, val_mean, len(results),
    )  # fmt: skip


def choose_strengths(
    store: RunStore, args: argparse.Namespace
) -> tuple[dict[Family, float], list[Summary]]:
    """The sweep's summaries and, per family, the strength with the best mean validation acc."""
    sweep: list[Summary] = []
    best: dict[Family, float] = {}
    for optimizer in args.optimizers:
        for regulariser in REGULARISED:
            summaries = [
                summarise(
                    store,
                    [
                        RunConfig(optimizer, regulariser, strength, args.base_batch_size, s, True)
                        for s in args.seeds
                    ],
                )
                for strength in grid(args, optimizer, regulariser)
            ]
            sweep += summaries
            chosen = max(summaries, key=lambda summary: summary.val_mean or 0.0)
            best[optimizer, regulariser] = chosen.strength
    return best, sweep


def per_seed_spread(values: dict[int, list[float]]) -> dict[int, float]:
    """Per seed, the best minus the worst of its values."""
    return {seed: max(accs) - min(accs) for seed, accs in values.items()}


def test_accs(
    store: RunStore, args: argparse.Namespace, family: Family, strength: float, batch: int
) -> dict[int, float]:
    """Test accuracy per seed of ``family`` at ``strength`` and ``batch``."""
    return {
        seed: store.test(batch_config(args, family, strength, batch, seed)) for seed in args.seeds
    }


def batch_spread(
    store: RunStore, args: argparse.Namespace, family: Family, strength: float
) -> dict[int, float]:
    """Per seed, the spread of test accuracy over the batch sizes."""
    by_batch = [test_accs(store, args, family, strength, b) for b in args.batch_sizes]
    return per_seed_spread({s: [accs[s] for accs in by_batch] for s in args.seeds})


def grid_spread(store: RunStore, args: argparse.Namespace, family: Family) -> dict[int, float]:
    """Per seed, the spread of test accuracy over the strength grid at the base batch size."""
    by_value = [
        test_accs(store, args, family, value, args.base_batch_size) for value in grid(args, *family)
    ]
    return per_seed_spread({s: [accs[s] for accs in by_value] for s in args.seeds})


def verdicts(
    store: RunStore, args: argparse.Namespace, best: dict[Family, float]
) -> tuple[list[dict[str, Any]], list[Comparison]]:
    """The three claims, for each Norm Loss form under each optimizer, against weight decay."""
    records: list[dict[str, Any]] = []
    comparisons: list[Comparison] = []
    evaluated = f"first {args.eval_limit} test images" if args.eval_limit else "10,000 images"
    tested = f"test accuracy ({evaluated})"
    batches = "/".join(str(b) for b in args.batch_sizes)
    base = args.base_batch_size
    for optimizer in args.optimizers:
        opt = OPTIMIZER_LABELS[optimizer]
        wd_family: Family = (optimizer, "weight_decay")
        wd = best[wd_family]
        wd_name = f"weight decay {wd:g} ({opt})"
        wd_grid = ", ".join(f"{v:g}" for v in grid(args, *wd_family))
        for regulariser in NORM_LOSSES:
            family: Family = (optimizer, regulariser)
            strength = best[family]
            label = LABELS[regulariser]
            name = f"{label} {strength:g} ({opt})"
            nl_grid = ", ".join(f"{v:g}" for v in grid(args, *family))
            claims = [
                (
                    f"{label} is competitive with tuned weight decay under {opt} (batch {base}, "
                    f"each strength chosen on validation; not worse by more than {args.margin:g})",
                    compare(
                        name,
                        test_accs(store, args, family, strength, base),
                        wd_name,
                        test_accs(store, args, wd_family, wd, base),
                        claim="not_worse",
                        margin=args.margin,
                    ),
                    tested,
                ),
                (
                    f"{label} is less sensitive to the batch size than weight decay under {opt} "
                    f"(batch sizes {batches}, lr and epochs fixed)",
                    compare(
                        name,
                        batch_spread(store, args, family, strength),
                        wd_name,
                        batch_spread(store, args, wd_family, wd),
                        claim="better",
                        higher_is_better=False,
                    ),
                    f"spread of {tested} over batch sizes {batches} (max - min, per seed)",
                ),
                (
                    f"{label} is less sensitive to its factor than weight decay under {opt} "
                    f"(strengths {nl_grid} vs weight decays {wd_grid}, batch {base})",
                    compare(
                        f"{label} ({opt})",
                        grid_spread(store, args, family),
                        f"weight decay ({opt})",
                        grid_spread(store, args, wd_family),
                        claim="better",
                        higher_is_better=False,
                    ),
                    f"spread of {tested} over the strength grid (max - min, per seed)",
                ),
            ]
            for claim, comparison, metric in claims:
                comparisons.append(comparison)
                records.append(verdict_record(claim, comparison, metric=metric))
    return records, comparisons


# --------------------------------------------------------------------------- plot
COLORS = {
    "none": "0.4",
    "weight_decay": "tab:blue",
    "norm_loss": "tab:orange",
    "norm_loss_decoupled": "tab:green",
}


def plot(
    sweep: list[Summary],
    references: list[Summary],
    batches: list[Summary],
    best: dict[Family, float],
    path: Path,
    args: argparse.Namespace,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(args.optimizers)
    fig, axes = plt.subplots(
        rows, 4, figsize=(15, 3.6 * rows), constrained_layout=True, sharey="row", squeeze=False
    )
    for row, optimizer in enumerate(args.optimizers):
        opt = OPTIMIZER_LABELS[optimizer]
        none = next(s for s in references if s.optimizer == optimizer)
        for column, regulariser in enumerate(REGULARISED):
            ax = axes[row][column]
            points = [s for s in sweep if (s.optimizer, s.regulariser) == (optimizer, regulariser)]
            ax.axhspan(
                none.test_mean - none.test_std, none.test_mean + none.test_std,
                color=COLORS["none"], alpha=0.15,
            )  # fmt: skip
            ax.axhline(none.test_mean, color=COLORS["none"], ls="--", label=LABELS["none"])
            ax.errorbar(
                [s.strength for s in points], [s.test_mean for s in points],
                yerr=[s.test_std for s in points], marker="o", capsize=3,
                color=COLORS[regulariser], label=LABELS[regulariser],
            )  # fmt: skip
            chosen = next(s for s in points if s.strength == best[optimizer, regulariser])
            ax.plot(
                [chosen.strength], [chosen.test_mean], marker="o", ms=13, mfc="none",
                color="k", ls="none", label="chosen on validation",
            )  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlabel(
                "weight decay factor" if regulariser == "weight_decay" else "Norm Loss strength λ"
            )
            ax.set_title(f"{opt}: {LABELS[regulariser]}, batch {args.base_batch_size}")
            if column == 0:
                ax.set_ylabel("test accuracy")
            ax.legend(fontsize=7)
        ax = axes[row][3]
        for regulariser in REGULARISED:
            points = sorted(
                (s for s in batches if (s.optimizer, s.regulariser) == (optimizer, regulariser)),
                key=lambda s: s.batch_size,
            )
            ax.errorbar(
                [s.batch_size for s in points], [s.test_mean for s in points],
                yerr=[s.test_std for s in points], marker="o", capsize=3,
                color=COLORS[regulariser], ls="-" if regulariser != "weight_decay" else "--",
                label=f"{LABELS[regulariser]} {points[0].strength:g}"
                + (" (baseline)" if regulariser == "weight_decay" else ""),
            )  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.batch_sizes, [str(b) for b in args.batch_sizes])
        ax.set_xlabel("batch size (lr and epochs fixed)")
        ax.set_title(f"{opt}: batch size, chosen strengths")
        ax.legend(fontsize=7)
    subset = "all 55,000" if args.train_subset is None else f"{args.train_subset:,}"
    evaluated = f"first {args.eval_limit}" if args.eval_limit else "10,000"
    fig.suptitle(
        f"Norm Loss vs weight decay: timm {args.model} on Fashion-MNIST 32x32 ({subset} training "
        f"images, {plural(args.epochs, 'epoch')}); test accuracy ({evaluated} images), "
        f"mean ± std over {plural(len(args.seeds), 'seed')} {args.seeds}; dashed grey: no "
        "regularisation",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    check_protocol_arguments(args)
    init_worker(args.threads)
    started = time.perf_counter()
    keys = (
        "model", "epochs", "train_subset", "sgd_lr", "momentum", "adamw_lr", "eval_limit",
        "quick", "full", "accelerator", "data_dir",
    )  # fmt: skip
    signature = {key: getattr(args, key) for key in keys}
    store = RunStore(results_dir(args.quick) / f"{NAME}.runs.json", signature, args.resume)
    console.print(
        f"[bold]{NAME}[/]: {args.model}, {args.epochs} epochs, subset {args.train_subset}, "
        f"seeds {args.seeds}, {args.workers} parallel runs of {args.threads} thread(s)"
    )
    if DEFAULT_STRENGTH not in args.norm_strengths:
        console.print(
            f"[yellow]the Norm Loss grid {args.norm_strengths} lacks the library default "
            f"strength {DEFAULT_STRENGTH:g} (the claim needs it: pass --norm-strengths)[/]"
        )

    run_all(sweep_configs(args) + reference_configs(args), store, args, "(a) strength sweep")
    best, sweep = choose_strengths(store, args)
    references = [
        summarise(store, [c for c in reference_configs(args) if c.optimizer == optimizer])
        for optimizer in args.optimizers
    ]
    families = [(o, r) for o in args.optimizers for r in REGULARISED]
    batch_runs = [
        batch_config(args, family, best[family], batch, seed)
        for family in families
        for batch in args.batch_sizes
        for seed in args.seeds
    ]
    run_all(batch_runs, store, args, "(b) batch sizes")
    batches = [
        summarise(
            store,
            [batch_config(args, family, best[family], batch, seed) for seed in args.seeds],
        )
        for family in families
        for batch in args.batch_sizes
    ]

    records, comparisons = verdicts(store, args, best)
    for comparison in comparisons:
        console.print(comparison.describe())

    columns = [
        "study", "optimizer", "regulariser", "strength", "batch size",
        "test acc mean", "test acc std", "val acc mean", "seeds",
    ]  # fmt: skip
    rows = [
        [
            study,
            OPTIMIZER_LABELS[s.optimizer],
            LABELS[s.regulariser],
            s.strength,
            s.batch_size,
            round(s.test_mean, 4),
            round(s.test_std, 4),
            None if s.val_mean is None else round(s.val_mean, 4),
            s.seeds,
        ]
        for study, summaries in (
            ("(a) strength", sweep + references),
            ("(b) batch size", [s for s in batches if s.batch_size != args.base_batch_size]),
        )
        for s in summaries
    ]
    wall = time.perf_counter() - started
    train_seconds = sum(result.seconds for result in store.results.values())
    chosen = {f"{OPTIMIZER_LABELS[o]} {LABELS[r]}": strength for (o, r), strength in best.items()}
    subset = "all 55,000" if args.train_subset is None else f"a stratified {args.train_subset}"
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes, 3 input channels",
        "data": f"FashionMNISTDataModule(image_size=32, channels=3, seed=SEED): {subset} of the "
        "55,000 training images, the seeded 5,000-image validation split, the 10,000 test images"
        + (f" (quick: first {args.eval_limit} evaluated)" if args.eval_limit else ""),
        "optimizers": {
            "SGD-m": f"SGD(lr={args.sgd_lr}, momentum={args.momentum}); weight decay = coupled "
            "L2 (SGD's weight_decay)",
            "AdamW": f"AdamW(lr={args.adamw_lr}); weight decay = AdamW's decoupled decay",
        },
        "regularised": "conv/linear weights (dim >= 2, classifier included); biases and "
        "normalisation parameters never; optimizer weight decay 0 with Norm Loss",
        "norm_loss": "NormLoss(strength=S, reduction='mean') (gradient form) and "
        "NormLoss(strength=S, reduction='mean', decoupled=True)",
        "scheduler": "CosineAnnealingLR over all optimizer steps (per step)",
        "epochs": args.epochs,
        "train_subset": args.train_subset,
        "seeds": args.seeds,
        "base_batch_size": args.base_batch_size,
        "batch_sizes": args.batch_sizes,
        "sgd_weight_decays": args.sgd_weight_decays,
        "adamw_weight_decays": args.adamw_weight_decays,
        "norm_loss_strengths": args.norm_strengths,
        "library_default_strength": DEFAULT_STRENGTH,
        "default_in_grid": DEFAULT_STRENGTH in args.norm_strengths,
        "selection": "per (optimizer, regulariser), the strength with the best mean validation "
        "accuracy over the seeds in (a); test accuracy only reported",
        "chosen_strengths": chosen,
        "margin": args.margin,
        "runs": len(store.results),
        "torch_threads_per_run": args.threads,
        "parallel_runs": args.workers,
        "train_seconds_total": round(train_seconds),
        "wall_minutes": round(wall / 60, 1),
        "quick": args.quick,
        "full": args.full,
        **device_settings(args),
    }
    picks = "; ".join(
        f"{OPTIMIZER_LABELS[o]}: gradient form {best[o, 'norm_loss']:g}, decoupled "
        f"{best[o, 'norm_loss_decoupled']:g}, weight decay {best[o, 'weight_decay']:g}"
        for o in args.optimizers
    )
    baselines = "; ".join(
        f"{OPTIMIZER_LABELS[s.optimizer]} weight decay {s.strength:g}: {s.test_mean:.4f} ± "
        f"{s.test_std:.4f}"
        for s in batches
        if s.regulariser == "weight_decay" and s.batch_size == args.base_batch_size
    )
    notes = (
        f"Strengths chosen on validation (library default {DEFAULT_STRENGTH:g}): {picks}. "
        f"Baseline test accuracy at batch {args.base_batch_size} ({baselines}); the published "
        "band for small CNNs on Fashion-MNIST is about 0.90-0.94. Verdicts: "
        + "; ".join(
            f"{tag} {c.arm} vs {c.baseline}: {c.verdict} ({c.difference:+.4f} [{c.low:+.4f}, "
            f"{c.high:+.4f}])"
            for tag, c in zip(itertools.cycle(CLAIM_TAGS), comparisons)
        )
        + f". Rows of (b) at batch {args.base_batch_size} are the runs of (a). Accuracy is the "
        "final model's; std is over seeds (seed = subset, split, shuffling, initialisation). "
        f"{overhead_summary('norm_loss')} Wall time {wall / 60:.1f} min."
    )
    path = write_results(
        NAME, settings=settings, columns=columns, rows=rows, notes=notes, quick=args.quick,
        verdicts=records,
    )  # fmt: skip
    figure = plot_path(NAME, quick=args.quick)
    plot(sweep, references, batches, best, figure, args)
    console.print(notes)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
