"""Test the AIMP claim on Fashion-MNIST: accelerated IMP against IMP and Lightning's ModelPruning.

Claim (Zullich et al., ICPR 2020): at a high final sparsity (10 rounds of 20%, 1 - 0.8^10 = 89.3%
of the weights pruned) Accelerated IMP, which shortens every round but the last, needs under half
the wall-clock of IMP with the same rewinding, and its final accuracy is within 1 point of IMP's.
The second question: how our callbacks compare with Lightning's built-in ``ModelPruning`` run as
IMP to the same sparsity.

Protocol: a small CNN defined here (conv 3x3 1->32, max-pool, conv 3x3 32->64, max-pool, linear
3136->128, linear 128->10, ReLU) on Fashion-MNIST at 28x28 (``FashionMNISTDataModule``): a
seeded stratified subset of the training images, a seeded stratified validation split, and the
full 10,000-image test set. SGD with momentum and weight decay, batch 128, and a cosine
learning-rate schedule that restarts every ``--epochs-per-round`` epochs (so every arm replays
the same schedule in each round). Every conv and linear weight, the classifier's included, is
pruned globally by magnitude; biases are not. Arms, for each seed (the seed sets the split, the
subset, the shuffling and the initialisation; runs with the same seed are paired):

- ``Dense CNN``: round 0 alone (E epochs, no pruning): the unpruned reference accuracy;
- ``IMP (lr rewinding)``: ``IterativeMagnitudePruning(rewind="lr")``, 11 rounds x E epochs;
- ``AIMP (lr rewinding)``: ``AcceleratedIMP(rewind="lr")``, the first 10 rounds shortened to
  ``--accelerated-epochs`` of E (default 0.4, the library default), the last one full;
- ``IMP (rewind to init)``: ``IterativeMagnitudePruning(rewind="init")`` (lottery ticket);
- ``ModelPruning (lottery ticket)``: Lightning's callback as IMP (``l1_unstructured``, global,
  20% at the end of every E-th epoch but the last round's, ``use_lottery_ticket_hypothesis=True``,
  its default: the pruned layers' weights go back to their initial values);
- ``ModelPruning (weights kept)``: the same with ``use_lottery_ticket_hypothesis=False``: the
  weights are kept and the restarting schedule replays the learning rate, the counterpart of our
  ``rewind="lr"``.

Timing is made fair: every arm runs under the same settings (``--workers`` processes x
``--threads`` torch threads), each run's ``Trainer.fit`` is timed after its data are loaded, and
when fewer runs than workers remain an idle worker trains the same CNN on random batches (a
filler, not measured) so that no run ever has the machine to itself. Per run the script records
the wall-clock and process CPU time of the fit and the share of the machine other processes used
meanwhile (``/proc/stat``; about 1/2 on 2 cores with 2 workers: the other worker).

Verdicts (paired by seed, 95% t-interval, ``_protocol.compare``): AIMP's test accuracy not worse
than IMP's by more than 1 point; AIMP's wall-clock lower than IMP's, and lower than half of it;
our IMP not worse than ModelPruning (1 point) with the same rewinding (to init; weights kept); our
AIMP against ModelPruning's default (lottery ticket) on accuracy (1 point) and wall-clock.

Budget (default): 5,000 training images (500 a class), 2,000 validation images, 10 rounds x 5
epochs, 3 seeds, 6 arms: 750 epochs of 5,000 images, validation every epoch, about 20 minutes
with 2 workers x 1 thread on a 2-core CPU. ``--full`` (GPU scale): all 55,000 training images
and the standard 5,000 validation images, the same schedule (11x the images per epoch).

Writes ``benchmarks/results/pruning_claim.json`` (table, notes, verdicts), the per-run records in
``benchmarks/results/pruning_claim.runs.json`` and ``docs/assets/results/pruning_claim.png``.

Usage::

    python benchmarks/pruning_claim.py           # defaults (~20 min, 2 workers x 1 thread)
    python benchmarks/pruning_claim.py --quick   # smoke run (~1-2 min)
    python benchmarks/pruning_claim.py --full --accelerator gpu
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from _common import (
    OtherLoad,
    console,
    init_worker,
    mean_std,
    overhead_summary,
    plot_path,
    results_dir,
    shown,
    trainer_kwargs,
    write_results,
)
from _protocol import (
    add_protocol_arguments,
    check_protocol_arguments,
    compare,
    device_settings,
    verdict_record,
)
from lightning.pytorch.callbacks import Callback, ModelPruning
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from lightning_dnn_tricks.callbacks import AcceleratedIMP, IterativeMagnitudePruning
from lightning_dnn_tricks.data import FashionMNISTDataModule
from lightning_dnn_tricks.models.base import SupervisedModule

NAME = "pruning_claim"
ARMS = ("imp_lr", "aimp_lr", "imp_init", "lightning_lth", "lightning_keep", "dense")
PRUNING_ARMS = ARMS[:-1]
LABELS = {
    "imp_lr": "IMP (lr rewinding)",
    "aimp_lr": "AIMP (lr rewinding)",
    "imp_init": "IMP (rewind to init)",
    "lightning_lth": "ModelPruning (lottery ticket)",
    "lightning_keep": "ModelPruning (weights kept)",
    "dense": "Dense CNN (round 0 only)",
}
COLORS = {
    "imp_lr": "tab:blue",
    "aimp_lr": "tab:orange",
    "imp_init": "tab:green",
    "lightning_lth": "0.35",
    "lightning_keep": "0.65",
    "dense": "black",
}
#: The claim: AIMP wall-clock at most this fraction of IMP's, accuracy at most 1 point lower.
TIME_RATIO, ACCURACY_MARGIN = 0.5, 0.01
#: The published test accuracies of small CNNs on Fashion-MNIST (the data set's README).
PUBLISHED_BAND = (0.90, 0.94)
TRAIN_IMAGES = 60_000
#: A smoke run (``--quick``) tests on the first 8 batches only; every other run on all 10,000.
QUICK_TEST_BATCHES = 8
ACCURACY = "test accuracy (10,000 images)"
QUICK_ACCURACY = f"test accuracy (first {QUICK_TEST_BATCHES} test batches: smoke run)"
WALL_CLOCK = "wall-clock seconds of the whole fit"


class FashionCNN(SupervisedModule):
    """Two 3x3 conv layers (32, 64 channels, each followed by 2x2 max-pooling), then 128 -> 10."""

    def __init__(self, optimizer: Any, scheduler: Any, hidden: int = 128) -> None:
        super().__init__(optimizer, scheduler, "epoch")
        self.net = build_cnn(hidden)
        self.build_metrics("acc", lambda: MulticlassAccuracy(num_classes=10, average="micro"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def compute_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        return nn.functional.cross_entropy(logits, y), logits, y


def build_cnn(hidden: int = 128) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden),
        nn.ReLU(),
        nn.Linear(hidden, 10),
    )


def restarting_cosine(epoch: int, period: int) -> float:
    """Cosine factor from 1 towards 0 over ``period`` epochs, restarting every period."""
    return 0.5 * (1.0 + math.cos(math.pi * (epoch % period) / period))


def lightning_amount(epoch: int, period: int, total: int, amount: float) -> float:
    """ModelPruning's ``amount(epoch)``: prune at the end of every round but the last."""
    return amount if (epoch + 1) % period == 0 and epoch + 1 < total else 0.0


def accelerated_length(args: argparse.Namespace) -> int:
    """Epochs of one shortened AIMP round (what ``AcceleratedIMP`` computes)."""
    value = args.accelerated_epochs
    if value >= 1:
        return int(value)
    return max(1, math.ceil(value * args.epochs_per_round - 1e-9))


def round_lengths(arm: str, args: argparse.Namespace) -> list[int]:
    """Epochs of each round of ``arm`` (round 0 first)."""
    if arm == "dense":
        return [args.epochs_per_round]
    if arm == "aimp_lr":
        return [accelerated_length(args)] * args.rounds + [args.epochs_per_round]
    return [args.epochs_per_round] * (args.rounds + 1)


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
    other_load: float | None
    epochs: int
    sparsity: float
    val_acc: list[float] = field(default_factory=list)  # at the end of every epoch

    def round_val_acc(self, args: argparse.Namespace) -> list[float]:
        """Validation accuracy at the end of each round (before the next pruning)."""
        lengths = round_lengths(self.config.arm, args)
        ends = [sum(lengths[: r + 1]) - 1 for r in range(len(lengths))]
        return [self.val_acc[e] for e in ends if e < len(self.val_acc)]


class ValRecorder(Callback):
    """Keeps ``val/acc`` at the end of every training epoch (validation runs before this hook)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get("val/acc")
        self.values.append(float(value) if value is not None else float("nan"))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="pruning rounds")
    parser.add_argument("--amount", type=float, default=0.2, help="fraction pruned per round")
    parser.add_argument("--epochs-per-round", type=int, default=5)
    parser.add_argument("--accelerated-epochs", type=float, default=0.4)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--train-subset", type=int, default=5000, help="training images (stratified subset)"
    )
    parser.add_argument("--val-images", type=int, default=2000, help="validation images")
    parser.add_argument("--workers", type=int, default=2, help="runs trained in parallel processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--quick", action="store_true", help="smoke run")
    add_protocol_arguments(parser)
    args = parser.parse_args(argv)
    if args.full:
        args.train_subset, args.val_images = None, 5000
    if args.quick:
        args.rounds, args.epochs_per_round = 2, 2
        args.train_subset, args.val_images = 500, 500
    return args


def weight_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def build_callback(arm: str, model: FashionCNN, args: argparse.Namespace) -> Callback | None:
    """The arm's pruning callback (``None`` for the dense reference)."""
    common = {"amount": args.amount, "rounds": args.rounds, "verbose": False}
    period = args.epochs_per_round
    if arm == "dense":
        return None
    if arm == "aimp_lr":
        accelerated = args.accelerated_epochs
        return AcceleratedIMP(
            accelerated_epochs=int(accelerated) if accelerated >= 1 else accelerated,
            epochs_per_round=period,
            rewind="lr",
            **common,
        )
    if arm in ("imp_lr", "imp_init"):
        return IterativeMagnitudePruning(
            epochs_per_round=period, rewind="lr" if arm == "imp_lr" else "init", **common
        )
    total = (args.rounds + 1) * period
    return ModelPruning(
        "l1_unstructured",
        parameters_to_prune=[(layer, "weight") for layer in weight_layers(model)],
        amount=partial(lightning_amount, period=period, total=total, amount=args.amount),
        use_global_unstructured=True,
        use_lottery_ticket_hypothesis=arm == "lightning_lth",
        make_pruning_permanent=True,
        verbose=0,
    )


def build_model(args: argparse.Namespace) -> FashionCNN:
    return FashionCNN(
        optimizer=partial(
            torch.optim.SGD, lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay
        ),
        scheduler=partial(
            torch.optim.lr_scheduler.LambdaLR,
            lr_lambda=partial(restarting_cosine, period=args.epochs_per_round),
        ),
    )


def train_once(config: RunConfig, args: argparse.Namespace) -> RunResult:
    pl.seed_everything(config.seed, verbose=False)
    model = build_model(args)
    callback = build_callback(config.arm, model, args)
    recorder = ValRecorder()
    data = FashionMNISTDataModule(
        data_dir=args.data_dir,
        batch_size=args.batch_size,
        train_subset=args.train_subset,
        val_fraction=args.val_images / TRAIN_IMAGES,
        seed=config.seed,
    )
    data.setup("fit")  # read the files before the clock starts: the same for every arm
    epochs = sum(round_lengths(config.arm, args))
    callbacks: list[Callback] = [recorder] if callback is None else [callback, recorder]
    trainer = pl.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        num_sanity_val_steps=0,
        **trainer_kwargs(args.accelerator, args.devices),
    )
    with OtherLoad() as load:
        start, cpu_start = time.perf_counter(), time.process_time()
        trainer.fit(model, datamodule=data)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    weights = [layer.weight for layer in weight_layers(model)]
    zeros = sum(int((w == 0).sum()) for w in weights)
    sparsity = zeros / sum(w.numel() for w in weights)
    tester = pl.Trainer(
        limit_test_batches=QUICK_TEST_BATCHES if args.quick else 1.0,
        **trainer_kwargs(args.accelerator, args.devices),
    )
    test_acc = float(tester.test(model, datamodule=data, verbose=False)[0]["test/acc"])
    return RunResult(
        config,
        test_acc,
        seconds,
        cpu_seconds,
        load.share,
        trainer.current_epoch,
        sparsity,
        recorder.values,
    )


def prepare_worker(args: argparse.Namespace) -> None:
    """Set up a process that trains runs, and pay its one-time costs before any run is timed.

    One short fit of the CNN on random images (lazy imports, first kernels), so that a worker's
    first run is not slower than its others.
    """
    init_worker(args.threads)
    pl.seed_everything(0, verbose=False)
    images = torch.utils.data.TensorDataset(
        torch.randn(4 * args.batch_size, 1, 28, 28), torch.randint(0, 10, (4 * args.batch_size,))
    )
    loader = torch.utils.data.DataLoader(images, batch_size=args.batch_size)
    warm = pl.Trainer(max_epochs=1, **trainer_kwargs(args.accelerator, args.devices))
    warm.fit(build_model(args), train_dataloaders=loader, val_dataloaders=loader)


def keep_busy(stop: Any, args: argparse.Namespace) -> float:
    """Train the CNN on random batches until ``stop`` is set; the seconds spent (a filler)."""
    device = "cuda" if args.accelerator in ("gpu", "cuda") else "cpu"
    net = build_cnn().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=args.momentum)
    x = torch.randn(args.batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    start = time.perf_counter()
    while not stop.is_set():
        for _ in range(10):
            optimizer.zero_grad()
            nn.functional.cross_entropy(net(x), y).backward()
            optimizer.step()
    return time.perf_counter() - start


def run_fair(
    function: Callable[[RunConfig], RunResult],
    configs: Sequence[RunConfig],
    on_result: Callable[[RunResult], None],
    args: argparse.Namespace,
) -> float:
    """Run every config in ``args.workers`` processes, none of them ever alone on the machine.

    The runs are queued first, then ``workers - 1`` fillers (``keep_busy``): a worker that finds
    the queue empty trains a filler until the last run ends, so every run has the same number of
    co-runners from start to end. Returns the fillers' seconds (0 with one worker).
    """
    if args.workers <= 1:
        prepare_worker(args)
        for config in configs:
            on_result(function(config))
        return 0.0
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        stop = manager.Event()
        with ProcessPoolExecutor(
            args.workers, mp_context=context, initializer=prepare_worker, initargs=(args,)
        ) as pool:
            runs = [pool.submit(function, config) for config in configs]
            fillers = [pool.submit(keep_busy, stop, args) for _ in range(args.workers - 1)]
            try:
                for future in as_completed(runs):
                    on_result(future.result())
            finally:
                stop.set()
            return sum(filler.result() for filler in fillers)


@dataclass(frozen=True)
class Summary:
    arm: str
    test_mean: float
    test_std: float
    seconds_mean: float
    seconds_std: float
    cpu_mean: float
    cpu_std: float
    load_mean: float | None
    epochs: int
    sparsity: float


def summarise(results: list[RunResult], arm: str) -> Summary:
    runs = [r for r in results if r.config.arm == arm]
    test_mean, test_std = mean_std([r.test_acc for r in runs])
    seconds_mean, seconds_std = mean_std([r.seconds for r in runs])
    cpu_mean, cpu_std = mean_std([r.cpu_seconds for r in runs])
    loads = [r.other_load for r in runs if r.other_load is not None]
    return Summary(
        arm,
        test_mean,
        test_std,
        seconds_mean,
        seconds_std,
        cpu_mean,
        cpu_std,
        statistics.fmean(loads) if loads else None,
        round(statistics.fmean(r.epochs for r in runs)),
        statistics.fmean(r.sparsity for r in runs),
    )


def by_seed(results: list[RunResult], arm: str, attribute: str) -> dict[int, float]:
    return {r.config.seed: getattr(r, attribute) for r in results if r.config.arm == arm}


def verdicts(results: list[RunResult], accuracy: str) -> list[dict[str, Any]]:
    """The claims' paired comparisons, as verdict records (printed as they are made).

    ``accuracy`` names the accuracy metric (the full test set, or a smoke run's part of it).
    """
    label = LABELS.__getitem__
    acc = partial(by_seed, results, attribute="test_acc")
    secs = partial(by_seed, results, attribute="seconds")
    half_imp = {seed: TIME_RATIO * value for seed, value in secs("imp_lr").items()}
    specs = [
        (
            "AIMP reaches IMP's final test accuracy (same lr rewinding, within 1 point)",
            compare(
                label("aimp_lr"), acc("aimp_lr"), label("imp_lr"), acc("imp_lr"),
                claim="not_worse", margin=ACCURACY_MARGIN,
            ),
            accuracy,
        ),
        (
            "AIMP takes less wall-clock than IMP (same rewinding)",
            compare(
                label("aimp_lr"), secs("aimp_lr"), label("imp_lr"), secs("imp_lr"),
                claim="better", higher_is_better=False,
            ),
            WALL_CLOCK,
        ),
        (
            "AIMP takes under half of IMP's wall-clock (the paper's claim)",
            compare(
                label("aimp_lr"), secs("aimp_lr"), f"{TIME_RATIO:g} x {label('imp_lr')}",
                half_imp, claim="better", higher_is_better=False,
            ),
            WALL_CLOCK,
        ),
        (
            "Our IMP (rewind to init) is as accurate as ModelPruning's lottery ticket (1 point)",
            compare(
                label("imp_init"), acc("imp_init"), label("lightning_lth"), acc("lightning_lth"),
                claim="not_worse", margin=ACCURACY_MARGIN,
            ),
            accuracy,
        ),
        (
            "Our IMP (lr rewinding) is as accurate as ModelPruning with the weights kept (1 point)",
            compare(
                label("imp_lr"), acc("imp_lr"), label("lightning_keep"), acc("lightning_keep"),
                claim="not_worse", margin=ACCURACY_MARGIN,
            ),
            accuracy,
        ),
        (
            "Our AIMP is as accurate as ModelPruning's default, the lottery ticket (1 point)",
            compare(
                label("aimp_lr"), acc("aimp_lr"), label("lightning_lth"), acc("lightning_lth"),
                claim="not_worse", margin=ACCURACY_MARGIN,
            ),
            accuracy,
        ),
        (
            "Our AIMP takes less wall-clock than ModelPruning's lottery ticket",
            compare(
                label("aimp_lr"), secs("aimp_lr"), label("lightning_lth"), secs("lightning_lth"),
                claim="better", higher_is_better=False,
            ),
            WALL_CLOCK,
        ),
    ]  # fmt: skip
    records = []
    for claim, comparison, metric in specs:
        console.print(f"{claim}: {comparison.describe()}")
        records.append(verdict_record(claim, comparison, metric=metric))
    return records


def plot(results: list[RunResult], summaries: dict[str, Summary], path: Any, args: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (curve, accuracy, clock) = plt.subplots(1, 3, figsize=(15, 4.6), constrained_layout=True)
    dense = [r for r in results if r.config.arm == "dense"]
    dense_val = statistics.fmean(r.val_acc[-1] for r in dense)
    for arm in PRUNING_ARMS:
        runs = [r for r in results if r.config.arm == arm]
        per_round = [r.round_val_acc(args) for r in runs]
        rounds = min(len(values) for values in per_round)
        means = [statistics.fmean(values[i] for values in per_round) for i in range(rounds)]
        sparsity = [100 * (1 - (1 - args.amount) ** i) for i in range(rounds)]
        curve.plot(sparsity, means, marker="o", ms=3, color=COLORS[arm], label=LABELS[arm])
    curve.axhline(dense_val, color="black", ls=":", lw=1, label="dense CNN after round 0")
    curve.set_xlabel("sparsity of the conv and linear weights (%)")
    curve.set_ylabel("validation accuracy at the end of the round")
    curve.set_title("(a) accuracy along the rounds (mean over seeds)", fontsize=9)
    curve.legend(fontsize=7)

    arms = list(PRUNING_ARMS)
    positions = list(range(len(arms)))
    ticks = [LABELS[a].replace(" (", "\n(") for a in arms]
    for panel, attribute, mean_key, std_key in (
        (accuracy, "test_acc", "test_mean", "test_std"),
        (clock, "seconds", "seconds_mean", "seconds_std"),
    ):
        for x, arm in zip(positions, arms, strict=True):
            s = summaries[arm]
            panel.bar(x, getattr(s, mean_key), width=0.6, color=COLORS[arm], alpha=0.8)
            panel.errorbar(x, getattr(s, mean_key), yerr=getattr(s, std_key), color="k", capsize=3)
            values = list(by_seed(results, arm, attribute).values())
            panel.plot([x] * len(values), values, "k.", ms=4)
        panel.set_xticks(positions, ticks, fontsize=7)
    imp = summaries["imp_lr"]
    accuracy.axhline(imp.test_mean, color=COLORS["imp_lr"], ls="--", lw=1, label="IMP (lr), mean")
    accuracy.axhline(
        summaries["dense"].test_mean, color="black", ls=":", lw=1, label="dense CNN (round 0)"
    )
    low = min(min(r.test_acc for r in results), summaries["dense"].test_mean)
    high = max(max(r.test_acc for r in results), summaries["dense"].test_mean)
    accuracy.set_ylim(low - 0.02, min(1.0, high + 0.01))
    accuracy.set_ylabel("final " + (QUICK_ACCURACY if args.quick else ACCURACY))
    accuracy.set_title("(b) final test accuracy (mean ± std, dots: seeds)", fontsize=9)
    accuracy.legend(fontsize=7, loc="lower right")
    clock.axhline(imp.seconds_mean, color=COLORS["imp_lr"], ls="--", lw=1, label="IMP (lr), mean")
    clock.axhline(
        TIME_RATIO * imp.seconds_mean, color="tab:red", ls=":", lw=1, label="half of IMP (lr)"
    )
    clock.set_ylabel("wall-clock seconds of the whole fit")
    clock.set_title(
        f"(c) wall-clock per fit ({args.workers} worker(s) x {args.threads} thread(s))",
        fontsize=9,
    )
    clock.legend(fontsize=7, loc="lower right")
    images = "all" if args.train_subset is None else f"{args.train_subset:,}"
    fig.suptitle(
        f"Pruning a 2-conv CNN on Fashion-MNIST ({images} training images): {args.rounds} rounds "
        f"of {args.amount:g} ({100 * (1 - (1 - args.amount) ** args.rounds):.1f}% sparse), "
        f"{args.epochs_per_round} epochs a round, seeds {', '.join(map(str, args.seeds))}",
        fontsize=10,
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    check_protocol_arguments(args)
    started = time.perf_counter()
    console.print(
        f"[bold]{NAME}[/]: {args.rounds} rounds of {args.amount}, {args.epochs_per_round} epochs "
        f"per round, {args.train_subset or 'all'} training images, seeds {args.seeds}, "
        f"{args.workers} worker(s) x {args.threads} thread(s), {args.accelerator}"
    )
    configs = [RunConfig(arm, seed) for seed in args.seeds for arm in ARMS]
    results: list[RunResult] = []

    def record(result: RunResult) -> None:
        results.append(result)
        load = "n/a" if result.other_load is None else f"{result.other_load:.2f}"
        console.print(
            f"{LABELS[result.config.arm]}, seed {result.config.seed}: test {result.test_acc:.4f}, "
            f"sparsity {result.sparsity:.4f}, {result.epochs} epochs, {result.seconds:.1f} s "
            f"(CPU {result.cpu_seconds:.1f} s, other load {load})"
        )

    filler_seconds = run_fair(partial(train_once, args=args), configs, record, args)
    results.sort(key=lambda r: (r.config.seed, ARMS.index(r.config.arm)))
    summaries = {arm: summarise(results, arm) for arm in ARMS}
    imp, aimp, dense = summaries["imp_lr"], summaries["aimp_lr"], summaries["dense"]
    rows = [
        [
            LABELS[s.arm],
            round(s.test_mean, 4),
            round(s.test_std, 4),
            round(s.seconds_mean, 1),
            round(s.seconds_std, 1),
            round(s.seconds_mean / imp.seconds_mean, 3),
            round(s.cpu_mean, 1),
            round(s.cpu_mean / imp.cpu_mean, 3),
            None if s.load_mean is None else round(s.load_mean, 2),
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
        "CPU time / IMP (lr)",
        "other CPU load",
        "epochs",
        "sparsity",
        "seeds",
    ]
    accuracy = QUICK_ACCURACY if args.quick else ACCURACY
    records = verdicts(results, accuracy) if len(set(args.seeds)) >= 3 else []
    band = "inside" if PUBLISHED_BAND[0] <= dense.test_mean <= PUBLISHED_BAND[1] else "outside"
    images = "all 55,000" if args.train_subset is None else f"{args.train_subset:,}"
    time_ratio = aimp.seconds_mean / imp.seconds_mean
    cost = " (the subset and the short rounds of this budget cost accuracy)"
    notes = " ".join(
        [
            f"AIMP / IMP (both lr rewinding) wall-clock ratio {time_ratio:.3f}, CPU-time ratio "
            f"{aimp.cpu_mean / imp.cpu_mean:.3f} (claim: <= {TIME_RATIO}); epochs "
            f"{aimp.epochs}/{imp.epochs} = {aimp.epochs / imp.epochs:.3f}; test accuracy AIMP "
            f"minus IMP {aimp.test_mean - imp.test_mean:+.4f} (claim: within "
            f"{ACCURACY_MARGIN:.2f}).",
            f"The dense CNN after round 0 ({args.epochs_per_round} epochs on {images} training "
            f"images) reaches {dense.test_mean:.4f} test accuracy, {band} the published band "
            f"{PUBLISHED_BAND[0]:.2f}-{PUBLISHED_BAND[1]:.2f} for small CNNs on Fashion-MNIST"
            f"{cost if band == 'outside' else ''}.",
            "Sparsity is measured on the conv and linear weights after training (target "
            f"{1 - (1 - args.amount) ** args.rounds:.4f}).",
            "Wall-clock covers the whole Trainer.fit (validation every epoch included, data "
            f"loading excluded); every run had the same co-runners: {args.workers} worker "
            f"process(es) x {args.threads} torch thread(s), each warmed up by one short fit, and "
            f"an unmeasured filler kept idle workers busy at the end ({filler_seconds:.0f} s in "
            "all). 'other CPU load' is the share of the machine other processes (the other "
            "worker included) used during the fit. Std is over seeds.",
            overhead_summary("iterative_pruning"),
            f"Wall time {(time.perf_counter() - started) / 60:.1f} min.",
        ]
    )
    settings = {
        "model": "CNN conv3x3(1->32)-pool-conv3x3(32->64)-pool-linear(3136->128)-linear(128->10), "
        "ReLU; every conv and linear weight pruned (global), biases not",
        "data": f"FashionMNISTDataModule(image_size=28, channels=1, batch_size={args.batch_size}"
        f", train_subset={args.train_subset}, val_fraction={args.val_images}/{TRAIN_IMAGES}, "
        "seed=SEED); test: "
        + (
            f"the first {QUICK_TEST_BATCHES} batches (smoke run)"
            if args.quick
            else "the full 10,000-image t10k set"
        ),
        "optimizer": f"SGD(lr={args.lr}, momentum={args.momentum}, "
        f"weight_decay={args.weight_decay})",
        "scheduler": f"LambdaLR: cosine over {args.epochs_per_round} epochs, restarting every "
        "round (ours also restore it at each rewind)",
        "rounds": args.rounds,
        "amount": args.amount,
        "epochs_per_round": args.epochs_per_round,
        "accelerated_epochs": args.accelerated_epochs,
        "epochs_per_arm": {LABELS[arm]: sum(round_lengths(arm, args)) for arm in ARMS},
        "train_images": args.train_subset or TRAIN_IMAGES - args.val_images,
        "val_images": args.val_images,
        "scope": "global",
        "seeds": args.seeds,
        "torch_threads_per_run": args.threads,
        "parallel_runs": args.workers,
        "filler_seconds": round(filler_seconds, 1),
        "quick": args.quick,
        "full": args.full,
        **device_settings(args),
    }
    path = write_results(
        NAME,
        settings=settings,
        columns=columns,
        rows=rows,
        notes=notes,
        quick=args.quick,
        verdicts=records,
    )
    runs_path = results_dir(args.quick) / f"{NAME}.runs.json"
    runs = [{**asdict(r), "label": LABELS[r.config.arm]} for r in results]
    runs_path.write_text(json.dumps({"settings": settings, "runs": runs}, indent=1) + "\n")
    figure = plot_path(NAME, quick=args.quick)
    plot(results, summaries, figure, args)
    console.print(notes)
    console.print(f"wrote {shown(path)}, {shown(runs_path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
