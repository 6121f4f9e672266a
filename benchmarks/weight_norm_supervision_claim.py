"""Test the Weight Norm Supervision claim (METHODS.md §6, our reconstruction) on a PCN and an RNN.

Claim (Guo, ICPR 2020): trained with few recurrent cycles and run with many, a predictive coding
network (PCN) or RNN whose weight norms are supervised stays stable (state differences shrink,
accuracy holds) where the unconstrained one drifts or blows up, at similar accuracy in the trained
regime.

Protocol, for every seed (the seed sets the data split, the shuffling and the initialisation; runs
with the same seed are paired), two arms that differ only by the ``WeightNormSupervision``
callback:

- PCN: ``models.PredictiveCodingNetwork`` (feedforward convs, feedback transposed convs, learnable
  rates) on scikit-learn's digits (8x8 grey), trained with ``--train-cycles`` cycles, Adam. WNS
  projects the feedforward convs to ``--pcn-ff-bound`` and the feedback transposed convs to
  ``--pcn-fb-bound`` (operator norms on their inputs' shapes). After training, the test split runs
  for ``--eval-cycles`` cycles: accuracy of the readout after each cycle, and the relative state
  change ``||r(t) - r(t-1)|| / ||r(t)||`` (all layers, whole test split) per cycle.
- RNN: a tanh ``SequenceModel`` on the adding problem, trained on sequences of ``--train-len``
  steps; WNS projects ``weight_hh`` to ``--rnn-bound``. After training: test MSE on freshly drawn
  adding sequences of each length in ``--eval-lens``, and the stability check
  (``functional.contraction_check``): two random initial states, the same test inputs of the
  longest length, distance after every step.

Writes ``benchmarks/results/weight_norm_supervision_claim.json`` and
``docs/assets/results/weight_norm_supervision_claim.png``.

Usage::

    python benchmarks/weight_norm_supervision_claim.py           # defaults (~5-10 min, 1 thread)
    python benchmarks/weight_norm_supervision_claim.py --quick   # smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from _common import (
    console,
    init_worker,
    mean_std,
    overhead_summary,
    plot_path,
    shown,
    trainer_kwargs,
    write_results,
)
from lightning.pytorch.callbacks import Callback

from lightning_dnn_tricks.callbacks import NormGroup, WeightNormSupervision
from lightning_dnn_tricks.data import DigitsDataModule, make_adding_problem
from lightning_dnn_tricks.functional import contraction_check, rnn_step, tanh_rnn_norms
from lightning_dnn_tricks.models import PredictiveCodingNetwork, SequenceModel

NAME = "weight_norm_supervision_claim"
ARMS = ("unconstrained", "WNS")
#: "Similar accuracy in the trained regime": WNS at most this far below (accuracy, 0-1 scale).
ACCURACY_MARGIN = 0.01


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--pcn-epochs", type=int, default=15)
    parser.add_argument("--pcn-channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--pcn-strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-cycles", type=int, default=3)
    parser.add_argument("--eval-cycles", type=int, default=100)
    parser.add_argument("--pcn-lr", type=float, default=3e-3)
    parser.add_argument(
        "--pcn-bounds",
        nargs="+",
        default=["4:0.25", "2:0.1"],
        help="WNS arms of the PCN, each FEEDFORWARD_BOUND:FEEDBACK_BOUND",
    )
    parser.add_argument("--pcn-estimate", choices=["operator", "reshape"], default="operator")
    parser.add_argument("--rnn-epochs", type=int, default=15)
    parser.add_argument("--rnn-hidden", type=int, default=32)
    parser.add_argument("--rnn-lr", type=float, default=1e-2)
    parser.add_argument("--rnn-bound", type=float, default=0.95)
    parser.add_argument("--train-len", type=int, default=10)
    parser.add_argument("--eval-lens", type=int, nargs="+", default=[10, 20, 50, 100, 200, 400])
    parser.add_argument("--num-train", type=int, default=4000, help="adding-problem examples")
    parser.add_argument("--quick", action="store_true", help="smoke run (~1 min)")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.pcn_epochs, args.rnn_epochs = [0], 2, 2
        args.eval_cycles, args.eval_lens, args.num_train = 20, [10, 40], 1000
    return args


def pcn_arms(args: argparse.Namespace) -> dict[str, tuple[float, float] | None]:
    """PCN arm label -> (feedforward bound, feedback bound), ``None`` for the unconstrained arm."""
    arms: dict[str, tuple[float, float] | None] = {"unconstrained": None}
    for text in args.pcn_bounds:
        ff, fb = (float(value) for value in text.split(":"))
        arms[f"WNS ff<={ff:g} fb<={fb:g}"] = (ff, fb)
    return arms


def wns_callback(groups: list[NormGroup]) -> WeightNormSupervision:
    return WeightNormSupervision(groups=groups, iterations=1)


# --------------------------------------------------------------------------- PCN
@dataclass
class PcnResult:
    arm: str
    seed: int
    val_acc: float
    acc_by_cycle: list[float]
    change_by_cycle: list[float]
    state_norm_by_cycle: list[float]
    norms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0


def _operator_norm(module: torch.nn.Module, shape: tuple[int, ...], **kwargs: Any) -> float:
    """Exact operator norm from the dense Jacobian (small layers only)."""
    x = torch.zeros(1, *shape)
    jacobian = torch.autograd.functional.jacobian(lambda t: module(t, **kwargs), x)
    return float(torch.linalg.matrix_norm(jacobian.reshape(-1, x.numel()), ord=2))


def train_pcn(arm: str, seed: int, args: argparse.Namespace) -> PcnResult:
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    model = PredictiveCodingNetwork(
        hidden_channels=args.pcn_channels,
        strides=args.pcn_strides,
        cycles=args.train_cycles,
        optimizer=partial(torch.optim.Adam, lr=args.pcn_lr),
    )
    callbacks: list[Callback] = []
    bounds = pcn_arms(args)[arm]
    if bounds is not None:
        est = args.pcn_estimate
        groups = [
            NormGroup("feedforward", bound=bounds[0], include=r"^feedforward\.", estimate=est),
            NormGroup("feedback", bound=bounds[1], include=r"^feedback\.", estimate=est),
        ]
        callbacks.append(wns_callback(groups))
    data = DigitsDataModule(batch_size=64, image_size=8, channels=1, seed=seed)
    trainer = pl.Trainer(max_epochs=args.pcn_epochs, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(model, datamodule=data)
    val_acc = float(trainer.callback_metrics["val/acc"])
    x, y = (torch.cat(t) for t in zip(*data.test_dataloader(), strict=True))
    model.eval()
    accs, changes, norms = [], [], []
    with torch.no_grad():
        states = model.initial_states(x)
        for cycle in range(args.eval_cycles + 1):
            if cycle:
                new = model.cycle(x, states)
                pairs = zip(new, states, strict=True)
                diff = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in pairs))  # type: ignore[arg-type]
                states = new
            size = torch.sqrt(sum((s**2).sum() for s in states))  # type: ignore[arg-type]
            if cycle:
                changes.append(float(diff / size.clamp_min(1e-12)))
            norms.append(float(size / len(x) ** 0.5))
            accs.append(float((model.readout(states).argmax(1) == y).float().mean()))
    layer_norms = {}
    shape = (1, 8, 8)
    for i, (ff, fb) in enumerate(zip(model.feedforward, model.feedback, strict=True)):
        out_shape = tuple(ff(torch.zeros(1, *shape)).shape[1:])
        layer_norms[f"ff{i}"] = _operator_norm(ff, shape)
        layer_norms[f"fb{i}"] = _operator_norm(fb, out_shape, output_size=list(shape[1:]))
        shape = out_shape
    for i, rate in enumerate(model.feedforward_rates):
        layer_norms[f"b{i}_max"] = float(F.relu(rate.detach()).max())
    return PcnResult(
        arm, seed, val_acc, accs, changes, norms, layer_norms, time.perf_counter() - start
    )


# --------------------------------------------------------------------------- RNN
@dataclass
class RnnResult:
    arm: str
    seed: int
    mse_by_len: list[float]
    acc_by_len: list[float]
    distances: list[float]
    recurrent_norm: float
    seconds: float = 0.0


class AddingData(pl.LightningDataModule):
    """Adding-problem sequences of one length (train/val), seeded."""

    def __init__(self, seq_len: int, num_train: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.train = torch.utils.data.TensorDataset(
            *make_adding_problem(num_train, seq_len, generator)
        )
        self.seed = seed

    def train_dataloader(self) -> torch.utils.data.DataLoader[Any]:
        generator = torch.Generator().manual_seed(self.seed)
        return torch.utils.data.DataLoader(
            self.train, batch_size=64, shuffle=True, generator=generator
        )


def train_rnn(arm: str, seed: int, args: argparse.Namespace) -> RnnResult:
    start = time.perf_counter()
    pl.seed_everything(seed, verbose=False)
    model = SequenceModel(
        "rnn",
        input_size=2,
        hidden_size=args.rnn_hidden,
        optimizer=partial(torch.optim.Adam, lr=args.rnn_lr),
    )
    callbacks: list[Callback] = []
    if arm == "WNS":
        groups = [NormGroup("recurrent", bound=args.rnn_bound, include="weight_hh")]
        callbacks.append(wns_callback(groups))
    trainer = pl.Trainer(max_epochs=args.rnn_epochs, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(model, datamodule=AddingData(args.train_len, args.num_train, seed))
    model.eval()
    mses, accs = [], []
    test_generator = torch.Generator().manual_seed(10_000 + seed)
    with torch.no_grad():
        for length in args.eval_lens:
            x, y = make_adding_problem(1000, length, test_generator)
            error = model(x) - y
            mses.append(float((error**2).mean()))
            accs.append(float((error.abs() < 0.1).float().mean()))
        hidden = args.rnn_hidden
        init = torch.Generator().manual_seed(20_000 + seed)
        h_a = torch.randn(1, 256, hidden, generator=init)
        h_b = torch.randn(1, 256, hidden, generator=init)
        x, _ = make_adding_problem(256, max(args.eval_lens), test_generator)
        report = contraction_check(rnn_step(model.rnn), list(x.unbind(1)), h_a, h_b)
    assert isinstance(model.rnn, torch.nn.RNN)
    return RnnResult(
        arm,
        seed,
        mses,
        accs,
        [float(d) for d in report.distances],
        tanh_rnn_norms(model.rnn)[0],
        time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- report
def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _cell(value: float | None) -> float | None:
    """A table cell: 4 significant digits; ``None`` (rendered as a dash) when not finite."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


def _text(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "non-finite (diverged)"


def plot(pcn: list[PcnResult], rnn: list[RnnResult], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    colors = dict(zip(pcn_arms(args), palette, strict=False))
    colors["WNS"] = "tab:blue"
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), constrained_layout=True)
    cycles = list(range(args.eval_cycles + 1))
    for result in pcn:
        label = result.arm if result.seed == args.seeds[0] else None
        color = colors[result.arm]
        axes[0, 0].plot(cycles, result.acc_by_cycle, color=color, alpha=0.7, label=label)
        axes[0, 1].plot(cycles[1:], result.change_by_cycle, color=color, alpha=0.7, label=label)
    for ax in axes[0]:
        ax.axvline(args.train_cycles, color="0.5", ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("cycles at evaluation (dotted: trained)")
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 0].set_title("(a) PCN on digits: accuracy vs cycles")
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_ylabel("||r(t) - r(t-1)|| / ||r(t)||")
    axes[0, 1].set_title("(b) PCN: relative state change per cycle")
    for result in rnn:
        label = result.arm if result.seed == args.seeds[0] else None
        color = colors[result.arm]
        axes[1, 0].plot(
            args.eval_lens, result.mse_by_len, "o-", color=color, alpha=0.7, label=label
        )
        axes[1, 1].plot(result.distances, color=color, alpha=0.7, label=label)
    axes[1, 0].axvline(args.train_len, color="0.5", ls=":", lw=1)
    axes[1, 0].axhline(1 / 6, color="0.5", ls="--", lw=1, label="predict 1 (MSE 1/6)")
    axes[1, 0].set_xscale("log")
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_xlabel("sequence length at evaluation (dotted: trained)")
    axes[1, 0].set_ylabel("test MSE")
    axes[1, 0].set_title("(c) tanh RNN on the adding problem")
    axes[1, 0].legend(fontsize=8)
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_xlabel("step")
    axes[1, 1].set_ylabel("||h_a(t) - h_b(t)||")
    axes[1, 1].set_title("(d) RNN: two initial states, same inputs")
    axes[1, 1].legend(fontsize=8)
    fig.suptitle(
        f"Weight Norm Supervision (our reconstruction), {len(args.seeds)} seeds (one line each)",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pcn_rows(pcn: list[PcnResult], args: argparse.Namespace) -> list[list[Any]]:
    """Accuracy, state change and state norm at a few cycle counts, per arm (mean over seeds)."""
    marks = [
        c for c in (0, 1, args.train_cycles, 10, 20, 50, args.eval_cycles) if c <= args.eval_cycles
    ]
    rows = []
    for arm in pcn_arms(args):
        runs = [r for r in pcn if r.arm == arm]
        for cycle in dict.fromkeys(marks):
            acc, acc_std = mean_std([r.acc_by_cycle[cycle] for r in runs])
            change = _mean([r.change_by_cycle[cycle - 1] for r in runs]) if cycle else None
            norm = _mean([r.state_norm_by_cycle[cycle] for r in runs])
            rows.append(
                [
                    "PCN digits",
                    arm,
                    f"{cycle} cycles",
                    round(acc, 4),
                    round(acc_std, 4),
                    _cell(change),
                    _cell(norm),
                    len(runs),
                ]
            )
    return rows


def rnn_rows(rnn: list[RnnResult], args: argparse.Namespace) -> list[list[Any]]:
    rows = []
    for arm in ARMS:
        runs = [r for r in rnn if r.arm == arm]
        for i, length in enumerate(args.eval_lens):
            mse, mse_std = mean_std([r.mse_by_len[i] for r in runs])
            acc = _mean([r.acc_by_len[i] for r in runs])
            rows.append(
                [
                    "RNN adding",
                    arm,
                    f"length {length}",
                    round(acc, 4),
                    float(f"{mse_std:.3g}"),
                    None,
                    float(f"{mse:.4g}"),
                    len(runs),
                ]
            )
    return rows


def verdict(pcn: list[PcnResult], rnn: list[RnnResult], args: argparse.Namespace) -> str:
    def pcn_mean(arm: str, attr: str, index: int) -> float:
        return _mean([getattr(r, attr)[index] for r in pcn if r.arm == arm])

    def rnn_mean(arm: str, attr: str, index: int) -> float:
        return _mean([getattr(r, attr)[index] for r in rnn if r.arm == arm])

    trained, last = args.train_cycles, args.eval_cycles
    mid = min(10, last)
    base = "unconstrained"
    parts = [
        f"PCN trained with {trained} cycles, unconstrained: test accuracy "
        f"{pcn_mean(base, 'acc_by_cycle', trained):.4f} at {trained} cycles, "
        f"{pcn_mean(base, 'acc_by_cycle', mid):.4f} at {mid}, "
        f"{pcn_mean(base, 'acc_by_cycle', last):.4f} at {last}; relative state change at cycle "
        f"{last} {_text(pcn_mean(base, 'change_by_cycle', last - 1))}, state norm per example "
        f"{_text(pcn_mean(base, 'state_norm_by_cycle', last))}."
    ]
    for arm in list(pcn_arms(args))[1:]:
        gap = pcn_mean(arm, "acc_by_cycle", trained) - pcn_mean(base, "acc_by_cycle", trained)
        parts.append(
            f"{arm}: {pcn_mean(arm, 'acc_by_cycle', trained):.4f} at {trained} cycles "
            f"(difference {gap:+.4f}; within {ACCURACY_MARGIN:.2f}: "
            f"{'yes' if gap >= -ACCURACY_MARGIN else 'no'}), "
            f"{pcn_mean(arm, 'acc_by_cycle', mid):.4f} at {mid}, "
            f"{pcn_mean(arm, 'acc_by_cycle', last):.4f} at {last}; state change "
            f"{_text(pcn_mean(arm, 'change_by_cycle', last - 1))}, state norm "
            f"{_text(pcn_mean(arm, 'state_norm_by_cycle', last))}."
        )
    for arm in pcn_arms(args):
        runs = [r for r in pcn if r.arm == arm]
        keys = sorted(runs[0].norms)
        means = ", ".join(f"{k} {_mean([r.norms[k] for r in runs]):.3g}" for k in keys)
        parts.append(f"PCN {arm}: exact operator norms and largest feedforward rate: {means}.")
    n = len(args.eval_lens) - 1
    ratios = {
        arm: _mean([r.distances[-1] / r.distances[0] for r in rnn if r.arm == arm]) for arm in ARMS
    }
    parts.append(
        f"RNN trained on length {args.train_len}: test MSE at length {args.eval_lens[0]} "
        f"{rnn_mean('unconstrained', 'mse_by_len', 0):.4g} unconstrained vs "
        f"{rnn_mean('WNS', 'mse_by_len', 0):.4g} with WNS; at length {args.eval_lens[n]} "
        f"{rnn_mean('unconstrained', 'mse_by_len', n):.4g} vs "
        f"{rnn_mean('WNS', 'mse_by_len', n):.4g}. "
        f"||W_hh||_2 {_mean([r.recurrent_norm for r in rnn if r.arm == 'unconstrained']):.3g} vs "
        f"{_mean([r.recurrent_norm for r in rnn if r.arm == 'WNS']):.3g}; distance between two "
        f"trajectories after {max(args.eval_lens)} steps over the initial one: "
        f"{ratios['unconstrained']:.3g} vs {ratios['WNS']:.3g}."
    )
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    console.print(
        f"[bold]{NAME}[/]: seeds {args.seeds}, {torch.get_num_threads()} thread(s), PCN "
        f"{args.pcn_epochs} epochs ({args.train_cycles} -> {args.eval_cycles} cycles), RNN "
        f"{args.rnn_epochs} epochs (length {args.train_len} -> {args.eval_lens})"
    )
    pcn: list[PcnResult] = []
    rnn: list[RnnResult] = []
    for seed in args.seeds:
        for arm in pcn_arms(args):
            result = train_pcn(arm, seed, args)
            pcn.append(result)
            console.print(
                f"PCN {arm} seed {seed}: val {result.val_acc:.4f}, test acc at "
                f"{args.train_cycles}/{args.eval_cycles} cycles "
                f"{result.acc_by_cycle[args.train_cycles]:.4f}/{result.acc_by_cycle[-1]:.4f}, "
                f"last change {result.change_by_cycle[-1]:.3g}, norms "
                f"{ {k: round(v, 3) for k, v in result.norms.items()} } ({result.seconds:.0f} s)"
            )
        for arm in ARMS:
            rnn_result = train_rnn(arm, seed, args)
            rnn.append(rnn_result)
            console.print(
                f"RNN {arm} seed {seed}: MSE by length "
                f"{[round(m, 4) for m in rnn_result.mse_by_len]}, ||W_hh|| "
                f"{rnn_result.recurrent_norm:.3f}, distance ratio "
                f"{rnn_result.distances[-1] / rnn_result.distances[0]:.3g} "
                f"({rnn_result.seconds:.0f} s)"
            )
    columns = [
        "model",
        "arm",
        "evaluated at",
        "accuracy mean",
        "accuracy std (PCN) / MSE std (RNN)",
        "relative state change",
        "state norm (PCN) / MSE (RNN)",
        "seeds",
    ]
    rows = pcn_rows(pcn, args) + rnn_rows(rnn, args)
    wall = time.perf_counter() - started
    settings = {
        "seeds": args.seeds,
        "torch_threads": torch.get_num_threads(),
        "pcn": {
            "model": f"PredictiveCodingNetwork(hidden_channels={args.pcn_channels}, "
            f"strides={args.pcn_strides}, kernel_size=3, cycles={args.train_cycles})",
            "data": "DigitsDataModule(image_size=8, channels=1, seed=SEED), batch 64",
            "optimizer": f"Adam(lr={args.pcn_lr})",
            "epochs": args.pcn_epochs,
            "eval_cycles": args.eval_cycles,
            "wns_arms": "feedforward convs (feedforward.*.weight) and feedback transposed convs "
            f"(feedback.*.weight) projected to FF:FB = {args.pcn_bounds} ({args.pcn_estimate} "
            "norms), 1 power iteration per step",
        },
        "rnn": {
            "model": f"SequenceModel('rnn', hidden_size={args.rnn_hidden}) (tanh)",
            "data": f"adding problem, {args.num_train} training sequences of length "
            f"{args.train_len}, batch 64; 1000 fresh test sequences per evaluated length",
            "optimizer": f"Adam(lr={args.rnn_lr})",
            "epochs": args.rnn_epochs,
            "eval_lengths": args.eval_lens,
            "wns": f"weight_hh projected to {args.rnn_bound}, 1 power iteration per step",
            "accuracy": "fraction of test sequences with |prediction - target| < 0.1",
            "stability_check": "256 pairs of N(0, 1) initial states, same test inputs",
        },
        "quick": args.quick,
    }
    notes = (
        f"{verdict(pcn, rnn, args)} Accuracy for the PCN is top-1 on the digits test split; for "
        "the RNN it is the share of test sequences predicted within 0.1. "
        f"{overhead_summary('weight_norm_supervision')} Wall time {wall / 60:.1f} min."
    )
    path = write_results(
        NAME, settings=settings, columns=columns, rows=rows, notes=notes, quick=args.quick
    )
    figure = plot_path(NAME, quick=args.quick)
    plot(pcn, rnn, figure, args)
    console.print(notes)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
