"""Test the SGD-G2 claim (METHODS.md §2): it adapts a poor starting learning rate, SGD does not.

Claim (Ayadi & Turinici, ICPR 2020): started from a learning rate that is too small or too large,
SGD-G2 adapts it and converges where plain SGD at the same starting rate stalls or diverges; at a
good rate it is not worse per gradient evaluation.

Protocol: a small timm backbone (``test_resnet``, random init, BatchNorm) on scikit-learn's
digits at 8x8, one channel (``DigitsDataModule``: stratified 70/15/15 split). Plain PyTorch loop
(SGD-G2 is a ``torch.optim.Optimizer``), batch 64, no momentum, no weight decay, no schedule.
SGD and SGD-G2 start from each lr in ``--lrs`` and get the same number of *gradient
evaluations* (``--evals``): SGD takes that many steps, SGD-G2 (two evaluations per step) half as
many. The probe evaluation of SGD-G2 runs with BatchNorm statistics preserved
(``preserve_buffers``). Every ``--eval-every`` evaluations the training loss (on the whole
training split, eval mode) is recorded; at the end the test accuracy. A run whose loss becomes
NaN/inf is counted as diverged (its loss and accuracy are left out of the means).

Writes ``benchmarks/results/sgdg2_claim.json`` and ``docs/assets/results/sgdg2_claim.png``
(training loss per gradient evaluation, and SGD-G2's step size ``h``).

Usage::

    python benchmarks/sgdg2_claim.py           # defaults (~6-8 min on one thread)
    python benchmarks/sgdg2_claim.py --quick   # smoke run (~30 s)
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from _common import console, init_worker, mean_std, plot_path, shown, write_results
from torch import nn

from lightning_dnn_tricks.data import DigitsDataModule
from lightning_dnn_tricks.optim import SGDG2, preserve_buffers

NAME = "sgdg2_claim"
OPTIMIZERS = ("SGD", "SGD-G2")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="test_resnet", help="timm architecture")
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2, 1e-1, 1.0])
    parser.add_argument("--evals", type=int, default=800, help="gradient evaluations per run")
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 lrs, 60 evals")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.lrs, args.evals, args.eval_every = [0], [1e-2, 1.0], 60, 20
    return args


@dataclass
class Run:
    optimizer: str
    lr: float
    seed: int
    curve: list[tuple[int, float]] = field(default_factory=list)  # (gradient evals, train loss)
    h: list[tuple[int, float]] = field(default_factory=list)  # SGD-G2's step size
    test_acc: float = math.nan
    seconds: float = 0.0

    @property
    def diverged(self) -> bool:
        return any(not math.isfinite(loss) for _, loss in self.curve)


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
        loss = float(nn.functional.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
    model.train()
    return loss, acc


def train(args: argparse.Namespace, optimizer_name: str, lr: float, seed: int) -> Run:
    data = DigitsDataModule(batch_size=args.batch_size, image_size=8, channels=1, seed=seed)
    train_x, train_y = data.splits.train.tensors
    test_x, test_y = data.splits.test.tensors
    torch.manual_seed(seed)
    model = timm.create_model(args.model, num_classes=10, in_chans=1)
    if optimizer_name == "SGD":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=lr)
        evals_per_step = 1
    else:
        opt = SGDG2(model.parameters(), lr=lr, h_max=10.0)
        opt.register_probe_hook(lambda: preserve_buffers(model))
        evals_per_step = 2
    run = Run(optimizer_name, lr, seed)
    loader = data.train_dataloader()
    evals, started = 0, time.perf_counter()
    run.curve.append((0, _evaluate(model, train_x, train_y)[0]))
    while evals < args.evals:
        for x, y in loader:

            def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
            evals += evals_per_step
            if evals % args.eval_every == 0:
                run.curve.append((evals, _evaluate(model, train_x, train_y)[0]))
                if optimizer_name == "SGD-G2":
                    run.h.append((evals, float(opt.param_groups[0]["lr"])))
                if not math.isfinite(run.curve[-1][1]):
                    evals = args.evals
            if evals >= args.evals:
                break
    run.seconds = time.perf_counter() - started
    run.test_acc = _evaluate(model, test_x, test_y)[1]
    return run


def summarise(runs: list[Run], lrs: Sequence[float]) -> list[list[Any]]:
    rows = []
    for name in OPTIMIZERS:
        for lr in lrs:
            group = [r for r in runs if r.optimizer == name and r.lr == lr]
            finite = [r for r in group if not r.diverged]
            loss = mean_std([r.curve[-1][1] for r in finite]) if finite else (None, None)
            acc = mean_std([r.test_acc for r in finite]) if finite else (None, None)
            final_h = mean_std([r.h[-1][1] for r in finite if r.h]) if name == "SGD-G2" else None
            rows.append(
                [
                    name,
                    lr,
                    group[0].curve[-1][0] if group else None,
                    None if loss[0] is None else round(loss[0], 4),
                    None if loss[1] is None else round(loss[1], 4),
                    None if acc[0] is None else round(acc[0], 4),
                    None if acc[1] is None else round(acc[1], 4),
                    f"{len(group) - len(finite)}/{len(group)}",
                    None if not final_h else round(final_h[0], 4),
                    round(sum(r.seconds for r in group) / max(1, len(group)), 2),
                ]
            )
    return rows


COLUMNS = [
    "optimizer",
    "initial lr",
    "gradient evals",
    "final train loss mean",
    "final train loss std",
    "test acc mean",
    "test acc std",
    "diverged",
    "final h (SGD-G2) mean",
    "seconds per run",
]


def plot(runs: list[Run], lrs: Sequence[float], quick: bool) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    colours = plt.get_cmap("viridis")(torch.linspace(0, 0.9, len(lrs)).tolist())
    for colour, lr in zip(colours, lrs, strict=True):
        for name, style in (("SGD", "--"), ("SGD-G2", "-")):
            group = [r for r in runs if r.optimizer == name and r.lr == lr and not r.diverged]
            if not group:
                continue
            steps = [e for e, _ in group[0].curve]
            losses = torch.tensor([[loss for _, loss in r.curve] for r in group])
            left.plot(steps, losses.mean(0), style, color=colour, label=f"{name}, lr0={lr:g}")
            if name == "SGD-G2":
                hs = torch.tensor([[h for _, h in r.h] for r in group])
                right.plot(
                    [e for e, _ in group[0].h], hs.mean(0), color=colour, label=f"lr0={lr:g}"
                )
    left.set(xlabel="gradient evaluations", ylabel="training loss", yscale="log")
    left.set_title("training loss (mean over seeds; diverged runs left out)")
    left.legend(fontsize=7, ncol=2)
    right.set(xlabel="gradient evaluations", ylabel="h (lr)", yscale="log")
    right.set_title("SGD-G2 step size h")
    right.legend(fontsize=7)
    path = plot_path(NAME, quick)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    runs = []
    for seed in args.seeds:
        for lr in args.lrs:
            for name in OPTIMIZERS:
                run = train(args, name, lr, seed)
                runs.append(run)
                console.print(
                    f"{name} lr0={lr:g} seed={seed}: loss {run.curve[-1][1]:.4f}, test acc "
                    f"{run.test_acc:.3f}{' (diverged)' * run.diverged}, {run.seconds:.1f} s"
                )
    rows = summarise(runs, args.lrs)
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes, 1 input channel",
        "data": "DigitsDataModule(image_size=8, channels=1, seed=SEED), 70/15/15 split",
        "batch_size": args.batch_size,
        "optimizers": "SGD(lr) without momentum; SGDG2(lr, beta=0.9, h_min=1e-6, h_max=10)",
        "gradient_evaluations": args.evals,
        "eval_every": args.eval_every,
        "lrs": args.lrs,
        "seeds": args.seeds,
        "threads": args.threads,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "quick": args.quick,
    }
    notes = (
        "Same gradient-evaluation budget for both: SGD-G2 takes half as many steps (two "
        "evaluations per step). Final train loss is measured on the whole training split in eval "
        "mode; test accuracy on the held-out test split. 'diverged' counts runs whose loss became "
        "NaN/inf; they are left out of the means. 'final h' is SGD-G2's adapted step size at the "
        "end. SGD-G2's rule is our reconstruction (METHODS.md §2)."
    )
    path = write_results(
        NAME, settings=settings, columns=COLUMNS, rows=rows, notes=notes, quick=args.quick
    )
    figure = plot(runs, args.lrs, args.quick)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
