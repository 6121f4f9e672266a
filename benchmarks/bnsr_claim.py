"""Test the BNSR claim (METHODS.md §8, our reconstruction) against BatchNorm on digits and MNIST-1D.

Claim (Ding et al., ICPR 2020): BNSR lowers the absolute per-channel skewness of the normalised
features compared with BatchNorm, and reaches at least BatchNorm's accuracy. The nonlinearity is
our reconstruction (a Yeo-Johnson warp with ``lam = 1 - alpha tanh(skewness)``, ``alpha = 1``).

Protocol, for every seed (the seed sets the data split, the shuffling and the initialisation; runs
with the same seed are paired):

- digits: a timm ``resnet18`` (random init) on scikit-learn's digits at 32x32 RGB, AdamW with a
  cosine schedule over the epochs;
- MNIST-1D: a small 1-D CNN defined here (four Conv1d + BatchNorm1d + ReLU blocks, global average
  pooling, a linear classifier), AdamW with a cosine schedule.

Three arms: BatchNorm; ``callbacks.BNSR()`` (every BatchNorm becomes BNSR, the default
skewness-driven exponent); ``callbacks.BNSR(newton_steps=2)`` (Newton steps on the exponent
toward zero batch skewness). Nothing else changes between the arms. After
training, the test split is passed through the model in eval mode; hooks on every normalisation
layer accumulate, per channel, the power sums of its input and of its output (before the
activation). The input's skewness is the skewness of BatchNorm's standardised values (standardising
is affine), i.e. the skewness *before* the warp; the output's is the skewness of the normalised
features the next layer sees. Reports test accuracy (mean and standard deviation over seeds) and
the distribution of ``|skewness|`` over all channels of all layers and seeds.

Writes ``benchmarks/results/bnsr_claim.json`` and ``docs/assets/results/bnsr_claim.png``.

Usage::

    python benchmarks/bnsr_claim.py           # defaults (~15 min on 2 idle CPU cores)
    python benchmarks/bnsr_claim.py --quick   # smoke run (~1-2 min)
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _common import (
    console,
    mean_std,
    overhead_summary,
    plot_path,
    progress,
    quiet_lightning,
    run_parallel,
    shown,
    trainer_kwargs,
    write_results,
)
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.callbacks import BNSR
from lightning_dnn_tricks.data import DigitsDataModule, MNIST1DDataModule
from lightning_dnn_tricks.models import TimmClassifier
from lightning_dnn_tricks.models.base import SupervisedModule

NAME = "bnsr_claim"
Dataset = Literal["digits", "mnist1d"]
Norm = Literal["bn", "bnsr", "bnsr_newton"]
DATASETS: tuple[Dataset, ...] = ("digits", "mnist1d")
NORMS: tuple[Norm, ...] = ("bn", "bnsr", "bnsr_newton")
LABELS = {"bn": "BatchNorm", "bnsr": "BNSR", "bnsr_newton": "BNSR + Newton"}
COLORS = {"bn": "tab:blue", "bnsr": "tab:orange", "bnsr_newton": "tab:green"}
#: "At least BatchNorm's accuracy": the mean paired difference is above minus this margin.
ACCURACY_MARGIN = 0.01


class Conv1dNet(SupervisedModule):
    """The MNIST-1D model: four ``Conv1d -> BatchNorm1d -> ReLU`` blocks, pooling, a classifier."""

    def __init__(self, channels: int = 32, optimizer: Any = None, scheduler: Any = None) -> None:
        super().__init__(optimizer, scheduler, "epoch")
        widths = [1, channels, channels, 2 * channels, 2 * channels]
        blocks: list[nn.Module] = []
        for index, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            stride = 2 if index in (1, 2) else 1
            blocks += [
                nn.Conv1d(width_in, width_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm1d(width_out),
                nn.ReLU(),
            ]
        self.net = nn.Sequential(
            *blocks, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(widths[-1], 10)
        )
        self.build_metrics("acc", lambda: MulticlassAccuracy(num_classes=10, average="micro"))

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.net(x)
        return logits

    def compute_loss(self, batch: Any) -> tuple[Tensor, Tensor, Tensor]:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits, y), logits, y


class ChannelMoments:
    """Per-channel power sums (float64) of the inputs and outputs of every BatchNorm-like layer."""

    def __init__(self, model: nn.Module) -> None:
        self.sums: dict[tuple[str, str], Tensor] = {}
        self.handles = [
            module.register_forward_hook(partial(self._record, name))
            for name, module in model.named_modules()
            if isinstance(module, _BatchNorm)
        ]

    def _record(self, name: str, module: nn.Module, inputs: Any, output: Tensor) -> None:
        for where, tensor in (("in", inputs[0]), ("out", output)):
            flat = tensor.detach().double().transpose(0, 1).reshape(tensor.shape[1], -1)
            sums = torch.stack(
                [
                    torch.full_like(flat[:, 0], flat.shape[1]),
                    *(flat.pow(k).sum(1) for k in (1, 2, 3)),
                ]
            )
            key = (name, where)
            self.sums[key] = self.sums[key] + sums if key in self.sums else sums

    def abs_skewness(self, where: str) -> list[float]:
        """``|m3 / m2^1.5|`` of every channel (constant channels left out)."""
        values: list[float] = []
        for (_, kind), (count, s1, s2, s3) in self.sums.items():
            if kind != where:
                continue
            mean = s1 / count
            m2 = s2 / count - mean**2
            m3 = s3 / count - 3 * mean * s2 / count + 2 * mean**3
            alive = m2 > 1e-10 * (s2 / count).clamp_min(1e-30)
            values += (m3[alive] / m2[alive].pow(1.5)).abs().tolist()
        return values

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


@dataclass(frozen=True)
class RunConfig:
    """One training run: dataset, normalisation arm, seed."""

    dataset: Dataset
    norm: Norm
    seed: int


@dataclass(frozen=True)
class RunResult:
    """Accuracies and per-channel |skewness| of the normalisation layers' inputs and outputs."""

    config: RunConfig
    val_acc: float
    test_acc: float
    skew_in: list[float]
    skew_out: list[float]
    seconds: float


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="timm architecture for digits")
    parser.add_argument("--digits-epochs", type=int, default=10)
    parser.add_argument("--mnist1d-epochs", type=int, default=30)
    parser.add_argument("--mnist1d-samples", type=int, default=5000)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=1.0, help="BNSR warp strength")
    parser.add_argument("--newton-steps", type=int, default=2, help="of the Newton variant")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="smoke run (~1-2 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.digits_epochs, args.mnist1d_epochs, args.mnist1d_samples = 1, 2, 1000
        args.seeds = [0]
    return args


def build(config: RunConfig, args: argparse.Namespace) -> tuple[pl.LightningModule, Any, int]:
    """The model, the datamodule and the number of epochs of one run."""
    epochs = args.digits_epochs if config.dataset == "digits" else args.mnist1d_epochs
    optimizer = partial(torch.optim.AdamW, lr=args.lr, weight_decay=args.weight_decay)
    scheduler = partial(torch.optim.lr_scheduler.CosineAnnealingLR, T_max=epochs)
    if config.dataset == "digits":
        model: pl.LightningModule = TimmClassifier(
            args.model, num_classes=10, in_chans=3, optimizer=optimizer, scheduler=scheduler
        )
        data: Any = DigitsDataModule(
            batch_size=args.batch_size, image_size=32, channels=3, seed=config.seed
        )
    else:
        model = Conv1dNet(optimizer=optimizer, scheduler=scheduler)
        data = MNIST1DDataModule(
            batch_size=args.batch_size, num_samples=args.mnist1d_samples, seed=config.seed
        )
    return model, data, epochs


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    """Train one model; return its accuracies and the |skewness| of its normalisation layers."""
    start = time.perf_counter()
    pl.seed_everything(config.seed, verbose=False)
    model, data, epochs = build(config, args)
    callbacks: list[Callback] = []
    if config.norm != "bn":
        steps = args.newton_steps if config.norm == "bnsr_newton" else 0
        callbacks.append(BNSR(alpha=args.alpha, newton_steps=steps))
    trainer = pl.Trainer(max_epochs=epochs, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(model, datamodule=data)
    val_acc = float(trainer.callback_metrics["val/acc"])
    test_acc = float(trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    moments = ChannelMoments(model)
    model.eval()
    with torch.no_grad():
        for x, _ in data.test_dataloader():
            model(x)
    moments.remove()
    return RunResult(
        config,
        val_acc,
        test_acc,
        moments.abs_skewness("in"),
        moments.abs_skewness("out"),
        time.perf_counter() - start,
    )


def run_all(configs: Sequence[RunConfig], args: argparse.Namespace) -> list[RunResult]:
    """Train every config in ``args.workers`` processes, with a progress bar."""
    results: list[RunResult] = []
    with progress() as bar:
        task = bar.add_task("runs", total=len(configs))

        def record(result: RunResult) -> None:
            results.append(result)
            c = result.config
            bar.console.print(
                f"{c.dataset} {c.norm} seed {c.seed}: test {result.test_acc:.4f}, median "
                f"|skew| {statistics.median(result.skew_out):.3f} ({result.seconds:.0f} s)"
            )
            bar.advance(task)

        run_parallel(
            partial(train_once, args=args),
            configs,
            record,
            workers=args.workers,
            threads=args.threads,
        )
    return results


def pick(results: Sequence[RunResult], dataset: Dataset, norm: Norm) -> list[RunResult]:
    return sorted(
        (r for r in results if (r.config.dataset, r.config.norm) == (dataset, norm)),
        key=lambda r: r.config.seed,
    )


def percentile(values: Sequence[float], percent: int) -> float:
    """The ``percent``-th percentile of ``values`` (inclusive method)."""
    if len(values) < 2:
        return float(values[0])
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def summary_row(results: Sequence[RunResult], dataset: Dataset, norm: Norm) -> list[Any]:
    runs = pick(results, dataset, norm)
    acc_mean, acc_std = mean_std([r.test_acc for r in runs])
    out = [v for r in runs for v in r.skew_out]
    before = [v for r in runs for v in r.skew_in]
    return [
        dataset,
        LABELS[norm],
        round(acc_mean, 4),
        round(acc_std, 4),
        len(runs),
        round(percentile(out, 50), 3),
        round(percentile(out, 75), 3),
        round(percentile(out, 90), 3),
        round(percentile(before, 50), 3),
        len(out),
    ]


COLUMNS = [
    "dataset",
    "normalisation",
    "test accuracy (mean)",
    "test accuracy (std)",
    "seeds",
    "|skewness| median (normalised features)",
    "|skewness| 75th percentile",
    "|skewness| 90th percentile",
    "|skewness| median before the warp",
    "channels x seeds",
]


def paired_difference(
    results: Sequence[RunResult], dataset: Dataset, norm: Norm
) -> tuple[float, float]:
    """Mean and standard deviation over seeds of ``norm``'s minus BatchNorm's test accuracy."""
    bn, bnsr = pick(results, dataset, "bn"), pick(results, dataset, norm)
    return mean_std([b.test_acc - a.test_acc for a, b in zip(bn, bnsr, strict=True)])


def plot(results: Sequence[RunResult], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    styles = {
        ("bn", "out"): "-",
        ("bnsr", "in"): ":",
        ("bnsr", "out"): "-",
        ("bnsr_newton", "out"): "-",
    }
    for ax, dataset in zip(axes[:2], DATASETS, strict=True):
        for (norm, where), line in styles.items():
            label = LABELS[norm] + (", before the warp" if where == "in" else " output")
            runs = pick(results, dataset, norm)
            values = sorted(v for r in runs for v in (r.skew_in if where == "in" else r.skew_out))
            fractions = [(i + 1) / len(values) for i in range(len(values))]
            ax.plot(values, fractions, line, color=COLORS[norm], label=label)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlabel("|skewness| per channel (test split, eval mode)")
        ax.set_ylabel("fraction of channels")
        ax.set_title(f"{dataset}: normalised features")
        ax.legend(fontsize=8)
    ax = axes[2]
    for offset, norm in zip((-0.15, 0.0, 0.15), NORMS, strict=True):
        means, stds = zip(
            *(mean_std([r.test_acc for r in pick(results, d, norm)]) for d in DATASETS),
            strict=True,
        )
        xs = [i + offset for i in range(len(DATASETS))]
        ax.errorbar(
            xs, means, yerr=stds, fmt="o", capsize=4, color=COLORS[norm], label=LABELS[norm]
        )
    ax.set_xticks(range(len(DATASETS)), list(DATASETS))
    ax.set_ylabel("test accuracy (mean ± std over seeds)")
    ax.set_title("accuracy")
    ax.legend(fontsize=8)
    fig.suptitle(
        f"BNSR (our reconstruction, alpha={args.alpha}) vs BatchNorm: {args.model} on digits "
        f"32x32, 1-D CNN on MNIST-1D, {len(args.seeds)} seed(s)",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    configs = [RunConfig(d, n, s) for d in DATASETS for s in args.seeds for n in NORMS]
    console.print(f"[bold]{NAME}[/]: {len(configs)} runs in {args.workers} process(es)")
    results = run_all(configs, args)
    rows = [summary_row(results, d, n) for d in DATASETS for n in NORMS]
    verdicts = []
    for dataset in DATASETS:
        by_norm = {n: r for r in rows for n in NORMS if r[:2] == [dataset, LABELS[n]]}
        for norm in NORMS[1:]:
            diff, diff_std = paired_difference(results, dataset, norm)
            skew, bn_skew = by_norm[norm][5], by_norm["bn"][5]
            verdicts.append(
                f"{dataset}, {LABELS[norm]}: median |skewness| {skew} vs {bn_skew} (BN) -> "
                f"{'lower' if skew < bn_skew else 'NOT lower'}; accuracy minus BN's = "
                f"{diff:+.4f} ± {diff_std:.4f} (paired over seeds) -> "
                f"{'at least BN' if diff >= -ACCURACY_MARGIN else 'below BN'} "
                f"(margin {ACCURACY_MARGIN})."
            )
    settings = {
        "digits": f"timm {args.model} (random init), 32x32 RGB, {args.digits_epochs} epochs",
        "mnist1d": f"Conv1dNet (4 blocks, 32/64 channels), {args.mnist1d_samples} samples, "
        f"{args.mnist1d_epochs} epochs",
        "optimizer": f"AdamW(lr={args.lr}, weight_decay={args.weight_decay}), cosine schedule",
        "batch_size": args.batch_size,
        "bnsr": f"callbacks.BNSR(alpha={args.alpha}) (our reconstruction)",
        "bnsr_newton": f"callbacks.BNSR(alpha={args.alpha}, newton_steps={args.newton_steps})",
        "seeds": args.seeds,
        "skewness": "per channel, over the test split in eval mode, all normalisation layers",
        "quick": args.quick,
    }
    notes = (
        "Our reconstruction of BNSR; our measurements, not the paper's. 'before the warp' is the "
        "skewness of the layer input (that of BatchNorm's standardised values); for BatchNorm "
        "it equals the output's. " + " ".join(verdicts) + " " + overhead_summary("bnsr")
    )
    path = write_results(
        NAME, settings=settings, columns=COLUMNS, rows=rows, notes=notes, quick=args.quick
    )
    figure = plot_path(NAME, quick=args.quick)
    plot(results, figure, args)
    for verdict in verdicts:
        console.print(verdict)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
