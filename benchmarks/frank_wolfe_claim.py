"""Test the FW-RNN claim on row-sequential Fashion-MNIST and on the adding problem (tanh RNNs).

Claim (Yue et al., ICPR 2020): a vanilla tanh RNN trained with FW-RNN reaches a higher accuracy /
lower loss per update and per second than Adam, and is more robust to input noise. Question of
our own: what does the inner loop (``K > 1``) add over ``K = 1``, which is Adam on per-tensor
normalised gradients?

Optimizers, one per arm, all at the same ``--lr``: Adam, and FrankWolfe (Adam base,
``radius = lr`` as in the paper, ``trajectory="official"``) with ``K`` in ``--ks``. Every arm of a
seed starts from the same weights and sees the same minibatches in the same order, so the arms
are compared at equal numbers of gradient evaluations (one minibatch each); FW-RNN with ``K``
inner steps makes one base (outer) step every ``K`` minibatches. FW-RNN is always evaluated at
its anchor weights (``anchor_weights()``). The training time (forward, backward and optimizer
step, no evaluation) is recorded at every evaluation, for the per-second view.

Task 1, row-sequential Fashion-MNIST: ``FashionMNISTDataModule(as_sequence=True)`` (28 steps of
28 pixels, the 55,000 training images of the seed's split, normalised), a one-layer tanh
``nn.RNN(28, --hidden-fm)`` with a linear head on the last step, cross-entropy, batch
``--batch-size-fm`` (the last incomplete batch of an epoch dropped), ``--epochs`` epochs. The
test accuracy on the full 10,000-image test set is measured after every epoch; the verdicts use
the one after the last epoch. No hyper-parameter is selected (one lr for every arm, as in the
paper), so the validation split only reports.

Task 2, the adding problem (``make_adding_problem``) at sequence length ``--lengths``, a
one-layer tanh RNN (``--hidden`` units) with a linear head on the last step, MSE loss, batch
``--batch-size``, fresh training batches from a seeded stream (the same for every optimizer of a
seed), ``--updates`` minibatches; a noisy variant adds Gaussian noise of std ``--noise`` to the
value channel of the training inputs (the test set is clean). Every ``--eval-every`` minibatches
the test MSE on ``--test-size`` fixed sequences is measured. Predicting the constant 1 scores MSE
1/6 ~ 0.167: lower means the RNN found the marked values.

Verdicts, paired by seed (95% t-interval of the per-seed difference): for each K, FW-RNN vs Adam
("better"), and for each K > 1, FW-RNN K vs FW-RNN K=1 ("better": what the inner loop adds), on
Fashion-MNIST test accuracy and on the final test MSE of each adding task.

Budgets. Default (CPU, 2 processes x 1 thread, about 20 minutes on 2 cores): Fashion-MNIST for
15 epochs (6,435 minibatches of 128, about 90 s per run), the adding problem at T=100, clean and
with input noise, for 12,000 minibatches of 32 (about 55 s per run); 4 optimizers x 3 seeds.
``--full`` (GPU scale): 50 epochs of Fashion-MNIST, and the adding problem at T=100 and T=200
(plus the noisy T=100) for 24,000 minibatches, the budget of the paper's adding experiment.

Writes ``benchmarks/results/frank_wolfe_claim.json`` and
``docs/assets/results/frank_wolfe_claim.png`` (test metric per minibatch and per second).

Usage::

    python benchmarks/frank_wolfe_claim.py           # defaults (~20 min, 2 processes x 1 thread)
    python benchmarks/frank_wolfe_claim.py --full --accelerator gpu --workers 4   # GPU scale
    python benchmarks/frank_wolfe_claim.py --quick   # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from _common import (
    console,
    init_worker,
    mean_std,
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
from lightning_dnn_tricks.data.sequence_tasks import make_adding_problem
from lightning_dnn_tricks.optim import FrankWolfe

NAME = "frank_wolfe_claim"
FASHION = "row-sequential Fashion-MNIST"
ACCURACY = "test accuracy (10,000 images)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--lr", type=float, default=1e-3, help="lr of every arm (= FW radius)")
    # Task 1: row-sequential Fashion-MNIST.
    parser.add_argument("--epochs", type=int, default=None, help="default 15 (--full: 50)")
    parser.add_argument("--hidden-fm", type=int, default=128)
    parser.add_argument("--batch-size-fm", type=int, default=128)
    parser.add_argument("--train-subset", type=int, default=None, help="default: all 55,000")
    # Task 2: the adding problem.
    parser.add_argument("--lengths", type=int, nargs="+", default=None, help="default 100")
    parser.add_argument("--updates", type=int, default=None, help="default 12000 (--full 24000)")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=1000)
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--noise", type=float, default=0.1, help="input noise std (noisy task)")
    parser.add_argument("--no-adding", action="store_true", help="run Fashion-MNIST only")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel processes")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 1,000 images, 2 epochs, 60 updates"
    )
    add_protocol_arguments(parser)
    args = parser.parse_args(argv)
    check_protocol_arguments(args)
    if args.epochs is None:
        args.epochs = 50 if args.full else 15
    if args.updates is None:
        args.updates = 24000 if args.full else 12000
    if args.lengths is None:
        args.lengths = [100, 200] if args.full else [100]
    if args.quick:
        args.epochs, args.train_subset = 2, 1000
        args.updates, args.eval_every, args.lengths, args.workers = 60, 20, [50], 1
    return args


@dataclass(frozen=True)
class Task:
    kind: str  # "fashion" or "adding"
    length: int = 28
    noise: float = 0.0

    @property
    def label(self) -> str:
        if self.kind == "fashion":
            return FASHION
        return f"adding T={self.length}" + (f", input noise {self.noise:g}" if self.noise else "")

    @property
    def metric(self) -> str:
        return "test accuracy" if self.kind == "fashion" else "test MSE"

    @property
    def higher_is_better(self) -> bool:
        return self.kind == "fashion"


@dataclass
class Run:
    task: Task
    optimizer: str
    seed: int
    # (minibatches, training seconds, test metric): accuracy on Fashion-MNIST, MSE on adding.
    curve: list[tuple[int, float, float]] = field(default_factory=list)
    seconds: float = 0.0
    val_accuracy: float | None = None
    train_examples: int = 0


class LastStepRNN(nn.Module):
    """A one-layer tanh RNN with a linear head on the last step's output."""

    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.rnn = nn.RNN(inputs, hidden, batch_first=True, nonlinearity="tanh")
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.rnn(x)[0][:, -1])
        return out


def optimizer_names(ks: Sequence[int]) -> list[str]:
    return ["Adam", *(f"FW-RNN K={k}" for k in ks)]


def inner_steps(name: str) -> int:
    """K of an optimizer name (1 for Adam: one base step per minibatch)."""
    return 1 if name == "Adam" else int(name.split("=")[1])


def build(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    if name == "Adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return FrankWolfe(model.parameters(), lr=lr, inner_steps=inner_steps(name))


def device_of(args: argparse.Namespace) -> torch.device:
    gpu = args.accelerator in ("gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def anchored(opt: torch.optim.Optimizer) -> contextlib.AbstractContextManager[Any]:
    return opt.anchor_weights() if isinstance(opt, FrankWolfe) else contextlib.nullcontext()


@functools.lru_cache(maxsize=4)
def fashion_splits(
    data_dir: str | None, seed: int, subset: int | None
) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """(x, y) of the train, val and test splits of the seed's data module (cached per process)."""
    dm = FashionMNISTDataModule(data_dir=data_dir, as_sequence=True, train_subset=subset, seed=seed)
    return tuple(tuple(split.tensors) for split in dm.splits)  # type: ignore[misc]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float:
    correct = 0
    for start in range(0, len(x), 2000):
        logits = model(x[start : start + 2000].to(device))
        correct += int((logits.argmax(1) == y[start : start + 2000].to(device)).sum())
    return correct / len(x)


def train_fashion(args: argparse.Namespace, task: Task, name: str, seed: int) -> Run:
    device = device_of(args)
    (train_x, train_y), (val_x, val_y), (test_x, test_y) = fashion_splits(
        args.data_dir, seed, args.train_subset
    )
    train_x, train_y = train_x.to(device), train_y.to(device)
    order = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = LastStepRNN(28, args.hidden_fm, 10).to(device)
    opt = build(name, model, args.lr)
    run = Run(task, name, seed, train_examples=len(train_x))
    batches = len(train_x) // args.batch_size_fm
    elapsed, update = 0.0, 0

    def evaluate() -> None:
        with anchored(opt):
            run.curve.append((update, elapsed, accuracy(model, test_x, test_y, device)))

    evaluate()
    for _ in range(args.epochs):
        permutation = torch.randperm(len(train_x), generator=order).to(device)
        for batch in range(batches):
            index = permutation[batch * args.batch_size_fm : (batch + 1) * args.batch_size_fm]
            sync(device)
            started = time.perf_counter()
            opt.zero_grad()
            nn.functional.cross_entropy(model(train_x[index]), train_y[index]).backward()
            opt.step()
            sync(device)
            elapsed += time.perf_counter() - started
            update += 1
        evaluate()
    with anchored(opt):
        run.val_accuracy = accuracy(model, val_x, val_y, device)
    run.seconds = elapsed
    return run


def train_adding(args: argparse.Namespace, task: Task, name: str, seed: int) -> Run:
    device = device_of(args)
    test_x, test_y = make_adding_problem(
        args.test_size, task.length, torch.Generator().manual_seed(10_000 + seed)
    )
    test_x, test_y = test_x.to(device), test_y.to(device)
    stream = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(20_000 + seed)
    torch.manual_seed(seed)
    model = LastStepRNN(2, args.hidden, 1).to(device)
    opt = build(name, model, args.lr)
    run = Run(task, name, seed)
    elapsed = 0.0

    def evaluate(update: int) -> None:
        with torch.no_grad(), anchored(opt):
            mse = float(nn.functional.mse_loss(model(test_x), test_y))
        run.curve.append((update, elapsed, mse))

    evaluate(0)
    for update in range(1, args.updates + 1):
        x, y = make_adding_problem(args.batch_size, task.length, stream)
        if task.noise:
            x[..., 0] += task.noise * torch.randn(x.shape[:-1], generator=noise)
        x, y = x.to(device), y.to(device)
        sync(device)
        started = time.perf_counter()
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sync(device)
        elapsed += time.perf_counter() - started
        if update % args.eval_every == 0 or update == args.updates:
            evaluate(update)
    run.seconds = elapsed
    return run


def train_item(args: argparse.Namespace, item: tuple[Task, str, int]) -> Run:
    """One run, for :func:`run_parallel` (a module-level function: picklable)."""
    task = item[0]
    return (train_fashion if task.kind == "fashion" else train_adding)(args, *item)


def value_at_seconds(run: Run, seconds: float) -> float:
    """The run's test metric at the last evaluation within ``seconds`` of training."""
    return [value for _, spent, value in run.curve if spent <= seconds * (1 + 1e-9)][-1]


def equal_seconds(runs: list[Run], task: Task) -> dict[tuple[str, int], float]:
    """Per run of ``task``: its metric at the shortest total training time among its seed's arms."""
    out = {}
    for seed in {r.seed for r in runs if r.task == task}:
        group = [r for r in runs if r.task == task and r.seed == seed]
        budget = min(r.seconds for r in group)
        out.update({(r.optimizer, seed): value_at_seconds(r, budget) for r in group})
    return out


COLUMNS = [
    "task",
    "optimizer",
    "metric",
    "minibatches",
    "base steps",
    "final mean",
    "final std",
    "at equal seconds mean",
    "at equal seconds std",
    "val accuracy mean",
    "ms per minibatch mean",
    "ms per minibatch std",
    "seeds",
]


def rounded_mean_std(values: Sequence[float], digits: int = 5) -> tuple[float | str, float | str]:
    """Mean and std rounded, or ``"n/a"`` when a run diverged (a non-finite value)."""
    if not all(math.isfinite(v) for v in values):
        return "n/a", "n/a"
    mean, std = mean_std(values)
    return round(mean, digits), round(std, digits)


def summarise(runs: list[Run], tasks: Sequence[Task], names: Sequence[str]) -> list[list[Any]]:
    rows = []
    for task in tasks:
        at_seconds = equal_seconds(runs, task)
        for name in names:
            group = [r for r in runs if r.task == task and r.optimizer == name]
            final = rounded_mean_std([r.curve[-1][2] for r in group])
            timed = rounded_mean_std([at_seconds[(name, r.seed)] for r in group])
            ms = rounded_mean_std([1e3 * r.seconds / r.curve[-1][0] for r in group], 3)
            val = [r.val_accuracy for r in group if r.val_accuracy is not None]
            minibatches = group[0].curve[-1][0]
            rows.append(
                [
                    task.label,
                    name,
                    task.metric,
                    minibatches,
                    minibatches // inner_steps(name),
                    *final,
                    *timed,
                    rounded_mean_std(val)[0] if val else "n/a",
                    *ms,
                    len(group),
                ]
            )
    return rows


def verdicts(
    runs: list[Run], tasks: Sequence[Task], ks: Sequence[int], budgets: dict[str, str]
) -> list[dict[str, Any]]:
    """FW-RNN K vs Adam and FW-RNN K>1 vs K=1, per task, paired by seed (final metric)."""
    records = []
    for task in tasks:
        final = {
            name: {r.seed: r.curve[-1][2] for r in runs if r.task == task and r.optimizer == name}
            for name in optimizer_names(ks)
        }
        metric = ACCURACY if task.kind == "fashion" else f"test MSE ({budgets['test']})"
        better = "a higher test accuracy" if task.kind == "fashion" else "a lower test MSE"
        where = f"on {task.label} after {budgets[task.kind]}"
        pairs = [(f"FW-RNN K={k}", "Adam") for k in ks]
        pairs += [(f"FW-RNN K={k}", "FW-RNN K=1") for k in ks if k > 1 and 1 in ks]
        for arm, baseline in pairs:
            values = [*final[arm].values(), *final[baseline].values()]
            if not all(math.isfinite(v) for v in values):  # a diverged run: say so, keep going
                console.print(f"no verdict for {arm} vs {baseline} ({task.label}): {values}")
                continue
            comparison = compare(
                arm, final[arm], baseline, final[baseline], higher_is_better=task.higher_is_better
            )
            console.print(comparison.describe() + f" ({task.label})")
            claim = f"{arm} reaches {better} than {baseline} {where}"
            records.append(verdict_record(claim, comparison, metric=metric))
    return records


def plot(
    runs: list[Run],
    tasks: Sequence[Task],
    names: Sequence[str],
    args: argparse.Namespace,
) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, len(tasks), figsize=(4.4 * len(tasks), 7.4), constrained_layout=True, squeeze=False
    )
    for column, task in enumerate(tasks):
        fashion = task.kind == "fashion"
        first = 1 if fashion else 0  # the untrained 0.1 would flatten the accuracy curves
        for name in names:
            group = [r for r in runs if r.task == task and r.optimizer == name]
            values = torch.tensor([[v for _, _, v in r.curve[first:]] for r in group])
            updates = [u for u, _, _ in group[0].curve[first:]]
            seconds = torch.tensor([[s for _, s, _ in r.curve[first:]] for r in group]).mean(0)
            style = "-" if name == "Adam" else "--"
            axes[0][column].plot(updates, values.mean(0), style, label=name)
            axes[0][column].fill_between(
                updates, values.min(0).values, values.max(0).values, alpha=0.15
            )
            axes[1][column].plot(seconds, values.mean(0), style, label=name)
        if fashion:
            adam = [r.curve[-1][2] for r in runs if r.task == task and r.optimizer == "Adam"]
            reference, what = statistics.fmean(adam), "Adam, final mean"
            model = f"tanh RNN(28\u2192{args.hidden_fm}), 28 rows of 28 px"
        else:
            reference, what = 1 / 6, "constant prediction 1"
            model = f"tanh RNN(2\u2192{args.hidden})"
        for row in (0, 1):
            axes[row][column].axhline(reference, color="grey", linestyle=":", label=what)
            axes[row][column].set_ylabel(task.metric)
        axes[0][column].set(title=f"{task.label}\n{model}", xlabel="minibatches")
        axes[1][column].set(xlabel=f"training seconds ({args.threads} thread, mean of seeds)")
        axes[0][column].legend(fontsize=7)
    seeds = ", ".join(str(s) for s in args.seeds)
    train = next(r.train_examples for r in runs if r.task.kind == "fashion")
    fig.suptitle(
        f"FW-RNN vs Adam (lr {args.lr:g}), seeds {seeds}: Fashion-MNIST ({train:,} train / "
        "10,000 test images) and the adding problem; band = min..max over seeds"
    )
    path = plot_path(NAME, args.quick)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    tasks = [Task("fashion")]
    if not args.no_adding:
        tasks += [Task("adding", length) for length in args.lengths]
        tasks.append(Task("adding", args.lengths[0], args.noise))
    names = optimizer_names(args.ks)
    runs: list[Run] = []

    def record(run: Run) -> None:
        runs.append(run)
        value = run.curve[-1][2]
        console.print(
            f"[{len(runs)}/{len(todo)}] {run.task.label}, {run.optimizer}, seed {run.seed}: "
            f"{run.task.metric} {value:.4f} "
            f"({1e3 * run.seconds / run.curve[-1][0]:.2f} ms/minibatch)"
        )

    # The long Fashion-MNIST runs first, so that the two workers finish together.
    todo = [(task, name, seed) for task in tasks for seed in args.seeds for name in names]
    run_parallel(
        partial(train_item, args), todo, record, workers=args.workers, threads=args.threads
    )
    order = {item: index for index, item in enumerate(todo)}
    runs.sort(key=lambda run: order[(run.task, run.optimizer, run.seed)])
    fashion = next(run for run in runs if run.task.kind == "fashion")
    train_images, minibatches = fashion.train_examples, fashion.curve[-1][0]
    budgets = {
        "fashion": f"{args.epochs} epochs ({minibatches:,} minibatches of {args.batch_size_fm})",
        "adding": f"{args.updates:,} minibatches of {args.batch_size}",
        "test": f"{args.test_size} fixed sequences",
    }
    settings = {
        "fashion_mnist": {
            "model": f"nn.RNN(28, {args.hidden_fm}, tanh) + Linear({args.hidden_fm}, 10) on "
            "the last step",
            "data": "FashionMNISTDataModule(as_sequence=True): 28 steps of 28 pixels, "
            f"{train_images:,} training images of the seed's split, the 10,000 test images",
            "epochs": args.epochs,
            "batch_size": args.batch_size_fm,
            "minibatches": minibatches,
            "train_subset": args.train_subset,
        },
        "adding": {
            "model": f"nn.RNN(2, {args.hidden}, tanh) + Linear({args.hidden}, 1) on the last step",
            "data": "make_adding_problem: fresh seeded training batches, fixed clean test set",
            "lengths": [] if args.no_adding else args.lengths,
            "noise_std_on_training_values": args.noise,
            "batch_size": args.batch_size,
            "updates": args.updates,
            "eval_every": args.eval_every,
            "test_size": args.test_size,
        },
        "lr": args.lr,
        "frank_wolfe": "FrankWolfe(lr, inner_steps=K, radius=None (= lr), trajectory='official', "
        "base Adam)",
        "ks": args.ks,
        "seeds": args.seeds,
        "threads": args.threads,
        "workers": args.workers,
        "full": args.full,
        **device_settings(args),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "quick": args.quick,
    }
    notes = (
        "All arms of a seed start from the same weights and see the same minibatches: they are "
        "compared at equal numbers of gradient evaluations (minibatches); 'base steps' is the "
        "number of Adam steps the arm made (minibatches / K). FW-RNN is evaluated at its anchor "
        "weights. 'final' is the test metric after the whole budget (Fashion-MNIST: accuracy on "
        "the 10,000 test images; adding: MSE on a fixed clean test set, where a constant "
        "prediction of 1 scores about 0.167). 'at equal seconds' is the test metric at the last "
        "evaluation within the shortest training time among the seed's arms (evaluations after "
        "every epoch / every eval_every minibatches). ms per minibatch = forward, backward and "
        "optimizer step only (no evaluation), on one thread of a shared machine: compare within "
        "one file. val accuracy: the seed's 5,000 validation images at the end (no selection is "
        "made on it: one lr for every arm). K=1 is Adam on per-tensor normalised gradients (the "
        "ablation of the inner loop)."
    )
    rows = summarise(runs, tasks, names)
    records = []
    if len(set(args.seeds)) >= 3:
        records = verdicts(runs, tasks, args.ks, budgets)
    else:
        console.print("fewer than 3 seeds: no verdicts")
    path = write_results(
        NAME,
        settings=settings,
        columns=COLUMNS,
        rows=rows,
        notes=notes,
        quick=args.quick,
        verdicts=records,
    )
    figure = plot(runs, tasks, names, args)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
