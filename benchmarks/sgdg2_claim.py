"""Test the SGD-G2 claim on Fashion-MNIST: it adapts a poor starting learning rate, SGD does not.

Claim (Ayadi & Turinici, ICPR 2020): started from a learning rate that is too small or too large,
SGD-G2 adapts it and converges where plain SGD at the same starting rate stalls or diverges; at a
good rate it is not worse **per gradient evaluation**.

Protocol: timm ``test_resnet`` (random init, BatchNorm, 0.37 M parameters) on Fashion-MNIST
(``FashionMNISTDataModule(image_size=32, channels=1, train_subset=N, seed=SEED)``: a stratified
seeded subset of the 55,000 training images, the seeded 5,000-image validation split, the full
10,000-image test set). Plain PyTorch loop (SGD-G2 is a ``torch.optim.Optimizer``), batch 128, no
momentum, no weight decay, no schedule. SGD and SGD-G2 start from each lr in ``--lrs`` and get
the same number of **gradient evaluations** (``--evals``): SGD takes that many steps, SGD-G2 (two
evaluations per step, on the same minibatch) half as many. Both draw the same batches in the same
order for a seed (seeded permutation per epoch), from the same initial weights. SGD-G2 uses
``h_max=10`` (the library default ``10 * lr`` would cap a small starting rate) and the default
``beta=0.9``, ``h_min=1e-6``; its probe evaluation keeps the BatchNorm statistics
(``preserve_buffers``). Every ``--eval-every`` gradient evaluations the training loss on a fixed
2,000-image sample of the training subset (eval mode) is recorded, with SGD-G2's step size ``h``;
at the end the validation and test accuracy. A run whose loss becomes NaN/inf is **diverged**:
it stops, and its accuracy is counted as the constant predictor's (0.1: the test and validation
sets are balanced), its loss is left out of the loss means.

Verdicts (paired by seed, 95% t-interval, ``_protocol.compare``), on test accuracy:

- at each starting lr except SGD's best: SGD-G2 **better** than SGD from the same lr;
- at SGD's best starting lr (the highest mean *validation* accuracy of SGD over the seeds): SGD-G2
  **not worse** than SGD, within ``--margin`` (default 0.01, 100 test images);
- sensitivity to the starting lr: per seed, the worst test accuracy over all starting lrs; SGD-G2
  **better** than SGD.

Budget. Default: 20,000 training images, 1,200 gradient evaluations per run (SGD: 1,200 steps
of 128 = 7.7 passes over the subset; SGD-G2: 600 steps), lrs 1e-3, 1e-2, 1e-1, 1, 10, seeds 0 1 2:
30 runs in 2 worker processes of 1 thread, about 20 minutes on 2 CPU cores (test_resnet trains
at about 2,300 img/s per thread at 32x32). ``--full`` (GPU scale): all 55,000 training images and
6,000 gradient evaluations per run (14 passes for SGD). ``--quick``: a smoke run (3 seeds, 2 lrs,
20 evaluations on 1,000 images, 1 worker) written to ``benchmarks/results/quick/``.

Writes ``benchmarks/results/sgdg2_claim.json`` and ``docs/assets/results/sgdg2_claim.png``
(training loss per gradient evaluation at each starting lr, test accuracy per starting lr, and
SGD-G2's step size ``h``).

Usage::

    python benchmarks/sgdg2_claim.py                      # default (~20 min on 2 CPU cores)
    python benchmarks/sgdg2_claim.py --quick              # smoke run (~1 min)
    python benchmarks/sgdg2_claim.py --full --accelerator gpu --workers 2   # GPU scale
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Any

import timm
import torch
from _common import (
    console,
    init_worker,
    mean_std,
    overhead_summary,
    plot_path,
    run_parallel,
    shown,
    write_results,
)
from _protocol import (
    add_protocol_arguments,
    check_protocol_arguments,
    compare,
    device_settings,
    verdict_record,
)
from torch import nn

from lightning_dnn_tricks.data import FashionMNISTDataModule
from lightning_dnn_tricks.optim import SGDG2, preserve_buffers

NAME = "sgdg2_claim"
OPTIMIZERS = ("SGD", "SGD-G2")
#: Accuracy of a constant predictor on the balanced validation and test sets (a diverged run).
CHANCE = 0.1
CURVE_IMAGES = 2000
METRIC = "test accuracy (10,000 images)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="test_resnet", help="timm architecture")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0, 10.0])
    parser.add_argument("--evals", type=int, default=None, help="gradient evaluations per run")
    parser.add_argument("--eval-every", type=int, default=None)
    parser.add_argument("--train-subset", type=int, default=None, help="training images")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--h-max", type=float, default=10.0, help="SGD-G2's largest step size")
    parser.add_argument("--margin", type=float, default=0.01, help="not-worse margin (accuracy)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel processes")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 lrs, 20 evaluations")
    add_protocol_arguments(parser)
    args = parser.parse_args(argv)
    evals, every, subset = (6000, 500, None) if args.full else (1200, 100, 20000)
    if args.quick:
        args.lrs, evals, every, subset, args.workers = [1e-2, 10.0], 20, 10, 1000, 1
    args.evals = evals if args.evals is None else args.evals
    args.eval_every = every if args.eval_every is None else args.eval_every
    args.train_subset = subset if args.train_subset is None else args.train_subset
    check_protocol_arguments(args)
    if args.evals % 2 or args.eval_every % 2:
        raise SystemExit("--evals and --eval-every must be even (SGD-G2 takes 2 per step).")
    return args


@dataclass
class Run:
    optimizer: str
    lr: float
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (gradient evals, train loss)
    h: list[tuple[int, float]] = field(default_factory=list)  # SGD-G2's step size
    val_acc: float = math.nan
    test_acc: float = math.nan
    seconds: float = 0.0

    @property
    def diverged(self) -> bool:
        return any(not math.isfinite(loss) for _, loss in self.curve)

    @property
    def final_loss(self) -> float:
        return self.curve[-1][1]


def _device(args: argparse.Namespace) -> torch.device:
    cuda = args.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if cuda else "cpu")


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(y), batch):
            logits = model(x[start : start + batch])
            target = y[start : start + batch]
            loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    model.train()
    return loss / len(y), correct / len(y)


def _batches(n: int, batch_size: int, seed: int, device: torch.device) -> Any:
    """Indices of shuffled batches, epoch after epoch (the same sequence for a seed)."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n - batch_size + 1, batch_size):  # full batches only
            yield order[start : start + batch_size]


@lru_cache(maxsize=2)
def _splits(
    data_dir: str | None, train_subset: int | None, seed: int
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The (images, labels) of the train, val and test splits for a seed (cached per process:
    SGD and SGD-G2 runs of a seed share them)."""
    data = FashionMNISTDataModule(
        data_dir=data_dir, image_size=32, channels=1, train_subset=train_subset, seed=seed
    )
    data.setup()
    return tuple(
        (split.tensors[0].contiguous(), split.tensors[1].contiguous()) for split in data.splits
    )


def train(args: argparse.Namespace, item: tuple[str, float, int]) -> Run:
    """One run: ``optimizer_name`` from the starting ``lr``, seed ``seed``."""
    optimizer_name, lr, seed = item
    device = _device(args)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = (
        tuple(t.to(device) for t in split)
        for split in _splits(args.data_dir, args.train_subset, seed)
    )
    sample = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(seed))
    sample = sample[:CURVE_IMAGES].to(device)
    curve_x, curve_y = train_x[sample], train_y[sample]
    torch.manual_seed(seed)
    model = timm.create_model(args.model, num_classes=10, in_chans=1).to(device)
    if optimizer_name == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        evals_per_step = 1
    else:
        opt = SGDG2(model.parameters(), lr=lr, h_max=max(args.h_max, lr))
        opt.register_probe_hook(lambda: preserve_buffers(model))
        evals_per_step = 2
    run = Run(optimizer_name, lr, seed)
    started = time.perf_counter()
    run.curve.append((0, _evaluate(model, curve_x, curve_y)[0]))
    if optimizer_name == "SGD-G2":
        run.h.append((0, lr))
    evals = 0
    for index in _batches(len(train_y), args.batch_size, seed, device):
        x, y = train_x[index], train_y[index]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        evals += evals_per_step
        if evals % args.eval_every == 0 or evals >= args.evals:
            run.curve.append((evals, _evaluate(model, curve_x, curve_y)[0]))
            if optimizer_name == "SGD-G2":
                run.h.append((evals, float(opt.param_groups[0]["lr"])))
            if not math.isfinite(run.curve[-1][1]):
                break
        if evals >= args.evals:
            break
    run.seconds = time.perf_counter() - started
    if run.diverged:
        run.val_acc = run.test_acc = CHANCE
    else:
        run.val_acc = _evaluate(model, val_x, val_y)[1]
        run.test_acc = _evaluate(model, test_x, test_y)[1]
    return run


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def summarise(runs: list[Run], lrs: Sequence[float]) -> list[list[Any]]:
    rows = []
    for name in OPTIMIZERS:
        for lr in lrs:
            group = [r for r in runs if r.optimizer == name and r.lr == lr]
            finite = [r for r in group if not r.diverged]
            loss = mean_std([r.final_loss for r in finite]) if finite else (None, None)
            val = mean_std([r.val_acc for r in group])
            acc = mean_std([r.test_acc for r in group])
            final_h = (
                mean_std([r.h[-1][1] for r in finite]) if name == "SGD-G2" and finite else None
            )
            rows.append(
                [
                    name,
                    lr,
                    args_evals(group),
                    _rounded(loss[0]),
                    _rounded(loss[1]),
                    _rounded(val[0]),
                    _rounded(acc[0]),
                    _rounded(acc[1]),
                    f"{len(group) - len(finite)}/{len(group)}",
                    None if final_h is None else _rounded(final_h[0]),
                    round(statistics.fmean(r.seconds for r in group), 1),
                ]
            )
    return rows


def args_evals(group: list[Run]) -> int | None:
    """The gradient evaluations the group's runs completed (the largest; diverged runs stop)."""
    return max((r.curve[-1][0] for r in group), default=None)


COLUMNS = [
    "optimizer",
    "initial lr",
    "gradient evals",
    "final train loss mean",
    "final train loss std",
    "val acc mean",
    "test acc mean",
    "test acc std",
    "diverged",
    "final h (SGD-G2) mean",
    "seconds per run",
]


def best_sgd_lr(runs: list[Run], lrs: Sequence[float]) -> float:
    """SGD's starting lr with the highest mean validation accuracy (ties: the smaller lr)."""
    scores = {
        lr: statistics.fmean(r.val_acc for r in runs if r.optimizer == "SGD" and r.lr == lr)
        for lr in lrs
    }
    return max(lrs, key=lambda lr: (scores[lr], -lr))


def verdicts(
    runs: list[Run], lrs: Sequence[float], margin: float
) -> tuple[list[dict[str, Any]], float]:
    """The claims' verdicts on test accuracy, paired by seed; and SGD's best lr (on validation)."""
    good = best_sgd_lr(runs, lrs)

    def accuracy(name: str, lr: float) -> dict[int, float]:
        return {r.seed: r.test_acc for r in runs if r.optimizer == name and r.lr == lr}

    records = []
    for lr in lrs:
        arm, base = accuracy("SGD-G2", lr), accuracy("SGD", lr)
        if lr == good:
            comparison = compare(
                f"SGD-G2 lr0={lr:g}", arm, f"SGD lr={lr:g}", base, claim="not_worse", margin=margin
            )
            claim = (
                f"From SGD's best starting lr ({lr:g}, chosen on validation), SGD-G2 is not "
                f"worse than SGD at equal gradient evaluations (margin {margin:g})"
            )
        else:
            comparison = compare(f"SGD-G2 lr0={lr:g}", arm, f"SGD lr={lr:g}", base)
            claim = (
                f"From the starting lr {lr:g}, SGD-G2 reaches a higher test accuracy than SGD at "
                "equal gradient evaluations"
            )
        console.print(comparison.describe())
        records.append(verdict_record(claim, comparison, metric=METRIC))
    seeds = sorted({r.seed for r in runs})
    worst = {
        name: {
            s: min(r.test_acc for r in runs if r.optimizer == name and r.seed == s) for s in seeds
        }
        for name in OPTIMIZERS
    }
    lr_list = ", ".join(f"{lr:g}" for lr in lrs)
    comparison = compare("SGD-G2 (worst lr0)", worst["SGD-G2"], "SGD (worst lr)", worst["SGD"])
    console.print(comparison.describe())
    records.append(
        verdict_record(
            f"SGD-G2 is less sensitive to the starting lr: its worst test accuracy over the "
            f"starting lrs {lr_list} is higher than SGD's",
            comparison,
            metric=f"{METRIC}, the worst over the starting lrs (per seed)",
        )
    )
    return records, good


def plot(runs: list[Run], lrs: Sequence[float], args: argparse.Namespace) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = sorted({r.seed for r in runs})
    top = [f"loss{i}" for i in range(len(lrs))]
    half = max(1, len(lrs) // 2)
    bottom = ["acc"] * half + ["h"] * (len(lrs) - half)
    fig, axes = plt.subplot_mosaic(
        [top, bottom], figsize=(max(9.0, 3.0 * len(lrs)), 7.6), constrained_layout=True
    )
    colours = {"SGD": "tab:grey", "SGD-G2": "tab:blue"}
    for i, lr in enumerate(lrs):
        ax = axes[f"loss{i}"]
        for name, style in (("SGD", "--"), ("SGD-G2", "-")):
            group = [r for r in runs if r.optimizer == name and r.lr == lr]
            finite = [r for r in group if not r.diverged]
            label = f"{name}" + (f" ({len(group) - len(finite)} diverged)" * (finite != group))
            if finite:
                steps = [e for e, _ in finite[0].curve]
                losses = torch.tensor([[loss for _, loss in r.curve] for r in finite])
                ax.plot(steps, losses.mean(0), style, color=colours[name], label=label)
            else:
                ax.plot([], [], style, color=colours[name], label=label)
        ax.axhline(math.log(10), color="black", lw=0.8, ls=":", label="constant predictor")
        ax.set(yscale="log", xlabel="gradient evaluations", title=f"starting lr {lr:g}")
        if i == 0:
            ax.set_ylabel("training loss (2,000 images)")
        ax.legend(fontsize=7)
    ax = axes["acc"]
    for name, style in (("SGD", "o--"), ("SGD-G2", "o-")):
        values = torch.tensor(
            [[r.test_acc for r in runs if r.optimizer == name and r.lr == lr] for lr in lrs]
        )
        ax.errorbar(
            lrs, values.mean(1), yerr=values.std(1) if values.shape[1] > 1 else None,
            fmt=style, color=colours[name], capsize=3, label=name,
        )  # fmt: skip
    ax.axhline(CHANCE, color="black", lw=0.8, ls=":", label="constant predictor")
    ax.set(xscale="log", xlabel="starting lr", ylabel="test accuracy (10,000 images)")
    ax.set_title(f"after {args.evals} gradient evaluations (mean ± std)")
    ax.legend(fontsize=7)
    ax = axes["h"]
    cmap = plt.get_cmap("viridis")
    for i, lr in enumerate(lrs):
        finite = [r for r in runs if r.optimizer == "SGD-G2" and r.lr == lr and not r.diverged]
        colour = cmap(0.9 * i / max(1, len(lrs) - 1))
        ax.axhline(lr, color=colour, lw=0.8, ls=":")
        if finite:
            hs = torch.tensor([[h for _, h in r.h] for r in finite])
            ax.plot([e for e, _ in finite[0].h], hs.mean(0), color=colour, label=f"lr0={lr:g}")
    ax.set(yscale="log", xlabel="gradient evaluations", ylabel="SGD-G2 step size h")
    ax.set_title("SGD-G2's h (dotted: starting lr = SGD's lr)")
    ax.legend(fontsize=7)
    images = "55,000" if args.train_subset is None else f"{args.train_subset:,}"
    fig.suptitle(
        f"SGD-G2 vs SGD (no momentum), timm {args.model}, Fashion-MNIST 32x32, "
        f"{images} training images, batch {args.batch_size}, seeds "
        f"{' '.join(map(str, seeds))}\ntraining loss: mean over the seeds that did not diverge"
    )
    path = plot_path(NAME, args.quick)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    items = [(name, lr, seed) for seed in args.seeds for lr in args.lrs for name in OPTIMIZERS]
    console.print(f"[bold]{NAME}[/]: {len(items)} runs in {args.workers} process(es)")
    runs: list[Run] = []

    def record(run: Run) -> None:
        runs.append(run)
        console.print(
            f"{run.optimizer} lr0={run.lr:g} seed={run.seed}: loss {run.final_loss:.4f}, val "
            f"{run.val_acc:.4f}, test {run.test_acc:.4f}{' (diverged)' * run.diverged}, "
            f"{run.seconds:.1f} s ({len(runs)}/{len(items)})"
        )

    run_parallel(partial(train, args), items, record, workers=args.workers, threads=args.threads)
    order = {item: i for i, item in enumerate(items)}
    runs.sort(key=lambda r: order[(r.optimizer, r.lr, r.seed)])
    rows = summarise(runs, args.lrs)
    records: list[dict[str, Any]] = []
    good = best_sgd_lr(runs, args.lrs)
    if len(set(args.seeds)) >= 3:
        records, good = verdicts(runs, args.lrs, args.margin)
    images = "all 55,000" if args.train_subset is None else f"{args.train_subset:,}"
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes, 1 input channel",
        "data": (
            f"FashionMNISTDataModule(image_size=32, channels=1, train_subset={args.train_subset}, "
            f"seed=SEED): {images} training images, 5,000 validation, 10,000 test"
        ),
        "batch_size": args.batch_size,
        "optimizers": (
            "SGD(lr) without momentum or weight decay; "
            f"SGDG2(lr, beta=0.9, h_min=1e-6, h_max={args.h_max:g}) with preserve_buffers"
        ),
        "gradient_evaluations": args.evals,
        "steps": {"SGD": args.evals, "SGD-G2": args.evals // 2},
        "eval_every": args.eval_every,
        "curve_images": CURVE_IMAGES,
        "lrs": args.lrs,
        "sgd_best_lr_on_validation": good,
        "not_worse_margin": args.margin,
        "seeds": args.seeds,
        "workers": args.workers,
        "threads": args.threads,
        "full": args.full,
        **device_settings(args),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "quick": args.quick,
    }
    notes = (
        "Same gradient-evaluation budget for both: SGD-G2 takes half as many steps (two "
        "evaluations per step, on the same minibatch). Same initial weights and batch order per "
        f"seed. Final train loss: on a fixed {CURVE_IMAGES:,}-image sample of the training "
        "images, eval mode. 'diverged' counts runs whose loss became NaN/inf: they are left out "
        f"of the loss means and their accuracy counts as the constant predictor's ({CHANCE}). "
        "'final h' is SGD-G2's adapted step size at the end. SGD's best starting lr "
        f"({good:g}) is chosen on the validation accuracy; there the claim is 'not worse' "
        f"(margin {args.margin:g}), at every other starting lr 'better'; the last verdict "
        "compares, per seed, the worst test accuracy over the starting lrs. 'seconds per run' "
        "includes the loss-curve evaluations and was measured with "
        f"{args.workers} run(s) sharing the machine; see the overhead table for cost. "
        "SGD-G2's rule is our reconstruction of the paper's. " + overhead_summary("sgdg2")
    )
    path = write_results(
        NAME,
        settings=settings,
        columns=COLUMNS,
        rows=rows,
        notes=notes,
        quick=args.quick,
        verdicts=records,
    )
    figure = plot(runs, args.lrs, args)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
