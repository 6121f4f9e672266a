"""Test the Norm Loss claim (METHODS.md §5) against L2 weight decay on the digits dataset.

Claim (Georgiou et al., ICPR 2020): Norm Loss reaches accuracy competitive with tuned weight decay,
is less sensitive to the batch size and to the regularisation factor, and costs little per step.

Protocol: a timm backbone (``resnet18`` by default, random init) on scikit-learn's digits resized
to 32x32 RGB (``DigitsDataModule``), SGD with momentum and a cosine schedule over the epochs.
Both regularisers act on the same tensors (every conv/linear weight); biases and normalisation
parameters are never regularised. With Norm Loss the optimizer's weight decay is 0.

(a) Strength sweep at the base batch size: weight decay over ``--weight-decays`` and Norm Loss
    over ``--norm-strengths`` (both a log grid of the same span), plus no regularisation.
(b) Batch sizes ``--batch-sizes`` with the best strength of each regulariser, chosen on the mean
    *validation* accuracy of (a) (the test split is only read for reporting), plus no
    regularisation. The learning rate and epochs stay fixed across batch sizes.

Each setting runs for every seed in ``--seeds``; the seed sets the data split, the shuffling and
the initialisation (runs with the same seed are paired). Reports test accuracy mean and standard
deviation over seeds; writes ``benchmarks/results/norm_loss_claim.json`` and the plot
``docs/assets/results/norm_loss_claim.png``. Per-run records go to
``benchmarks/results/norm_loss_claim.runs.json``; ``--resume`` reuses the matching ones.

Usage::

    python benchmarks/norm_loss_claim.py           # defaults (~25 min on 2 CPU cores)
    python benchmarks/norm_loss_claim.py --quick   # smoke run (~1-2 min)
"""

from __future__ import annotations

import argparse
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
from lightning.pytorch.callbacks import Callback

from lightning_dnn_tricks.callbacks import NormLoss
from lightning_dnn_tricks.data import DigitsDataModule
from lightning_dnn_tricks.models import TimmClassifier

NAME = "norm_loss_claim"
Regulariser = Literal["none", "weight_decay", "norm_loss"]
REGULARISERS: tuple[Regulariser, ...] = ("none", "weight_decay", "norm_loss")
LABELS = {"none": "no regularisation", "weight_decay": "weight decay", "norm_loss": "Norm Loss"}
AXIS = {"weight_decay": "weight decay", "norm_loss": "λ"}
#: Competitive: the best Norm Loss mean test accuracy is at most this far below weight decay's.
COMPETITIVE_MARGIN = 0.01


@dataclass(frozen=True)
class RunConfig:
    """One training run."""

    regulariser: Regulariser
    strength: float
    batch_size: int
    seed: int


@dataclass(frozen=True)
class RunResult:
    """The outcome of one training run."""

    config: RunConfig
    val_acc: float
    test_acc: float
    seconds: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="timm architecture")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--base-batch-size", type=int, default=64, help="batch size of (a)")
    parser.add_argument("--weight-decays", type=float, nargs="+", default=[1e-5, 1e-4, 1e-3, 1e-2])
    parser.add_argument("--norm-strengths", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel processes")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per run (1 is robust on shared CPUs; accuracy does not depend on it)",
    )
    parser.add_argument("--resume", action="store_true", help="reuse matching per-run records")
    parser.add_argument("--quick", action="store_true", help="smoke run (~1-2 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.seeds = 1, [0]
        args.weight_decays, args.norm_strengths = [1e-4, 1e-3], [1e-2, 1e-1]
        args.batch_sizes = [64, 256]
    if args.base_batch_size not in args.batch_sizes:
        args.batch_sizes = sorted({*args.batch_sizes, args.base_batch_size})
    return args


def param_groups(params: Any, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on conv/linear weights (dim >= 2) only: the tensors Norm Loss regularises."""
    params = [p for p in params if p.requires_grad]
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def build_sgd(
    params: Any, *, lr: float, momentum: float, weight_decay: float
) -> torch.optim.Optimizer:
    return torch.optim.SGD(param_groups(params, weight_decay), lr=lr, momentum=momentum)


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    """Train one model, return its final validation accuracy and its test accuracy."""
    start = time.perf_counter()
    pl.seed_everything(config.seed, verbose=False)
    decay = config.strength if config.regulariser == "weight_decay" else 0.0
    model = TimmClassifier(
        args.model,
        num_classes=10,
        in_chans=3,
        optimizer=partial(build_sgd, lr=args.lr, momentum=args.momentum, weight_decay=decay),
        scheduler=partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=args.epochs),
    )
    callbacks: list[Callback] = []
    if config.regulariser == "norm_loss":
        callbacks.append(NormLoss(strength=config.strength))
    data = DigitsDataModule(
        batch_size=config.batch_size, image_size=32, channels=3, seed=config.seed
    )
    trainer = pl.Trainer(max_epochs=args.epochs, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(model, datamodule=data)
    val_acc = float(trainer.callback_metrics["val/acc"])
    test_acc = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    return RunResult(config, val_acc, test_acc, time.perf_counter() - start)


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


def run_all(
    configs: Sequence[RunConfig], store: RunStore, args: argparse.Namespace, title: str
) -> None:
    """Train every config missing from ``store`` (in ``args.workers`` processes), with progress."""
    todo = [config for config in dict.fromkeys(configs) if config not in store.results]
    if not todo:
        return
    with progress() as bar:
        task = bar.add_task(title, total=len(todo))

        def record(result: RunResult) -> None:
            store.add(result)
            bar.console.print(
                f"{describe(result.config)}: val {result.val_acc:.4f}, "
                f"test {result.test_acc:.4f} ({result.seconds:.0f} s)"
            )
            bar.advance(task)

        train = partial(train_once, args=args)
        run_parallel(train, todo, record, workers=args.workers, threads=args.threads)


def describe(config: RunConfig) -> str:
    strength = "" if config.regulariser == "none" else f" {config.strength:g}"
    return f"{config.regulariser}{strength}, batch {config.batch_size}, seed {config.seed}"


def sweep_configs(args: argparse.Namespace) -> list[RunConfig]:
    settings: list[tuple[Regulariser, float]] = [("none", 0.0)]
    settings += [("weight_decay", value) for value in args.weight_decays]
    settings += [("norm_loss", value) for value in args.norm_strengths]
    return [
        RunConfig(regulariser, strength, args.base_batch_size, seed)
        for regulariser, strength in settings
        for seed in args.seeds
    ]


def batch_configs(args: argparse.Namespace, best: dict[Regulariser, float]) -> list[RunConfig]:
    return [
        RunConfig(regulariser, best[regulariser], batch_size, seed)
        for regulariser in REGULARISERS
        for batch_size in args.batch_sizes
        for seed in args.seeds
    ]


@dataclass(frozen=True)
class Summary:
    """Accuracy over seeds of one (regulariser, strength, batch size) setting."""

    regulariser: Regulariser
    strength: float
    batch_size: int
    test_mean: float
    test_std: float
    val_mean: float
    seeds: int


def summarise(
    store: RunStore, regulariser: Regulariser, strength: float, batch_size: int, seeds: list[int]
) -> Summary:
    results = [store.results[RunConfig(regulariser, strength, batch_size, seed)] for seed in seeds]
    test_mean, test_std = mean_std([r.test_acc for r in results])
    val_mean, _ = mean_std([r.val_acc for r in results])
    return Summary(regulariser, strength, batch_size, test_mean, test_std, val_mean, len(seeds))


def best_strengths(sweep: list[Summary]) -> dict[Regulariser, float]:
    """The strength of each regulariser with the highest mean validation accuracy."""
    best: dict[Regulariser, float] = {}
    for regulariser in REGULARISERS:
        candidates = [s for s in sweep if s.regulariser == regulariser]
        best[regulariser] = max(candidates, key=lambda s: s.val_mean).strength
    return best


def spread(summaries: list[Summary], regulariser: Regulariser) -> float:
    """Best minus worst mean test accuracy of ``regulariser`` over ``summaries``."""
    means = [s.test_mean for s in summaries if s.regulariser == regulariser]
    return max(means) - min(means)


def plot(
    sweep: list[Summary], batches: list[Summary], path: Path, args: argparse.Namespace
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"none": "0.4", "weight_decay": "tab:blue", "norm_loss": "tab:orange"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    none = next(s for s in sweep if s.regulariser == "none")
    left.axhspan(
        none.test_mean - none.test_std,
        none.test_mean + none.test_std,
        color=colors["none"],
        alpha=0.15,
    )
    left.axhline(none.test_mean, color=colors["none"], ls="--", label=LABELS["none"])
    for regulariser in ("weight_decay", "norm_loss"):
        points = [s for s in sweep if s.regulariser == regulariser]
        left.errorbar(
            [s.strength for s in points],
            [s.test_mean for s in points],
            yerr=[s.test_std for s in points],
            marker="o",
            capsize=3,
            color=colors[regulariser],
            label=f"{LABELS[regulariser]} (x = {AXIS[regulariser]})",
        )
    left.set_xscale("log")
    left.set_xlabel("regularisation factor")
    left.set_ylabel("test accuracy")
    left.set_title(f"(a) strength sweep, batch {args.base_batch_size}")
    left.legend(fontsize=8)
    for regulariser in REGULARISERS:
        points = sorted(
            (s for s in batches if s.regulariser == regulariser), key=lambda s: s.batch_size
        )
        suffix = "" if regulariser == "none" else f" ({points[0].strength:g})"
        right.errorbar(
            [s.batch_size for s in points],
            [s.test_mean for s in points],
            yerr=[s.test_std for s in points],
            marker="o",
            capsize=3,
            color=colors[regulariser],
            ls="--" if regulariser == "none" else "-",
            label=LABELS[regulariser] + suffix,
        )
    right.set_xscale("log", base=2)
    right.set_xticks(args.batch_sizes, [str(b) for b in args.batch_sizes])
    right.set_xlabel("batch size (lr and epochs fixed)")
    right.set_ylabel("test accuracy")
    right.set_title("(b) batch size, best strength of each")
    right.legend(fontsize=8)
    epochs, seeds = plural(args.epochs, "epoch"), plural(len(args.seeds), "seed")
    fig.suptitle(
        f"Norm Loss vs weight decay: {args.model} on digits 32x32, {epochs}, "
        f"mean ± std over {seeds}",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def verdict(sweep: list[Summary], batches: list[Summary], best: dict[Regulariser, float]) -> str:
    def at(summaries: list[Summary], regulariser: Regulariser) -> Summary:
        return next(
            s for s in summaries if s.regulariser == regulariser and s.strength == best[regulariser]
        )

    wd, nl, none = (at(sweep, r) for r in ("weight_decay", "norm_loss", "none"))
    gap = nl.test_mean - wd.test_mean
    competitive = gap >= -COMPETITIVE_MARGIN
    strength_wd, strength_nl = spread(sweep, "weight_decay"), spread(sweep, "norm_loss")
    batch_wd, batch_nl = spread(batches, "weight_decay"), spread(batches, "norm_loss")
    return (
        f"Best strengths by mean validation accuracy: weight decay {best['weight_decay']:g}, "
        f"Norm Loss lambda {best['norm_loss']:g}. Test accuracy at those: Norm Loss "
        f"{nl.test_mean:.4f} ± {nl.test_std:.4f}, weight decay {wd.test_mean:.4f} ± "
        f"{wd.test_std:.4f}, none {none.test_mean:.4f} ± {none.test_std:.4f} (Norm Loss minus "
        f"weight decay: {gap:+.4f}; 'competitive' = at most {COMPETITIVE_MARGIN:.2f} below: "
        f"{'yes' if competitive else 'no'}). Sensitivity to the factor (best minus worst mean "
        f"test accuracy over the sweep): Norm Loss {strength_nl:.4f}, weight decay "
        f"{strength_wd:.4f} ({'less' if strength_nl < strength_wd else 'not less'} sensitive). "
        f"Sensitivity to the batch size (same measure over batch sizes): Norm Loss "
        f"{batch_nl:.4f}, weight decay {batch_wd:.4f} "
        f"({'less' if batch_nl < batch_wd else 'not less'} sensitive)."
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    signature = {key: getattr(args, key) for key in ("model", "epochs", "lr", "momentum", "quick")}
    store = RunStore(results_dir(args.quick) / f"{NAME}.runs.json", signature, args.resume)
    console.print(
        f"[bold]{NAME}[/]: {args.model}, {args.epochs} epochs, seeds {args.seeds}, "
        f"{args.workers} parallel runs of {torch.get_num_threads()} thread(s)"
    )

    run_all(sweep_configs(args), store, args, "(a) strength sweep")
    sweep = [
        summarise(store, c.regulariser, c.strength, c.batch_size, args.seeds)
        for c in dict.fromkeys(
            RunConfig(c.regulariser, c.strength, c.batch_size, 0) for c in sweep_configs(args)
        )
    ]
    best = best_strengths(sweep)
    run_all(batch_configs(args, best), store, args, "(b) batch sizes")
    batches = [
        summarise(store, regulariser, best[regulariser], batch_size, args.seeds)
        for regulariser in REGULARISERS
        for batch_size in args.batch_sizes
    ]

    rows = [
        [
            study,
            LABELS[s.regulariser],
            s.strength,
            s.batch_size,
            round(s.test_mean, 4),
            round(s.test_std, 4),
            round(s.val_mean, 4),
            s.seeds,
        ]
        for study, summaries in (("(a) strength", sweep), ("(b) batch size", batches))
        for s in summaries
    ]
    columns = [
        "study",
        "regulariser",
        "strength",
        "batch size",
        "test acc mean",
        "test acc std",
        "val acc mean",
        "seeds",
    ]
    wall = time.perf_counter() - started
    train_seconds = sum(result.seconds for result in store.results.values())
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes, 3 input channels",
        "data": "DigitsDataModule(image_size=32, channels=3, val_fraction=0.15, "
        "test_fraction=0.15, seed=SEED): 1797 images, stratified 70/15/15 split",
        "optimizer": f"SGD(lr={args.lr}, momentum={args.momentum}); weight decay only on "
        "conv/linear weights (dim >= 2), 0 with Norm Loss",
        "scheduler": f"CosineAnnealingLR(T_max={args.epochs}) per epoch",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "base_batch_size": args.base_batch_size,
        "weight_decays": args.weight_decays,
        "norm_loss_strengths": args.norm_strengths,
        "norm_loss": "NormLoss(reduction='mean'), all conv/linear weights incl. classifier",
        "batch_sizes": args.batch_sizes,
        "selection": "best strength of each regulariser by mean final validation accuracy in (a)",
        "best_strengths": best,
        "torch_threads_per_run": torch.get_num_threads(),
        "parallel_runs": args.workers,
        "train_seconds_total": round(train_seconds),
        "quick": args.quick,
    }
    notes = (
        f"{verdict(sweep, batches, best)} Rows of (b) at batch {args.base_batch_size} reuse the "
        f"runs of (a). Accuracy is the final-epoch model's; std is over seeds (seed = split, "
        f"shuffling and initialisation). {overhead_summary('norm_loss')} "
        f"Wall time {wall / 60:.1f} min."
    )
    path = write_results(
        NAME, settings=settings, columns=columns, rows=rows, notes=notes, quick=args.quick
    )
    figure = plot_path(NAME, quick=args.quick)
    plot(sweep, batches, figure, args)
    console.print(notes)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
