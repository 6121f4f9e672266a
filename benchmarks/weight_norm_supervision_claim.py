"""Test the Weight Norm Supervision claim (METHODS.md §6, our reconstruction) on a PCN and an RNN.

Claim (Guo, ICPR 2020): trained with few recurrent cycles and run with many (e.g. 3 -> 100), a
predictive coding network (PCN) or RNN whose weight norms are supervised stays stable (state
differences shrink, accuracy holds) where the unconstrained one drifts or blows up, at similar
accuracy in the trained regime.

Protocol, for every seed (the seed sets the data split, the training subset, the shuffling and the
initialisation; runs with the same seed are paired), arms that differ only by the
``WeightNormSupervision`` callback:

- **PCN on Fashion-MNIST** (the paper's setting): ``models.PredictiveCodingNetwork``
  (``--pcn-channels`` 16/32, strides 1/2: feedforward convs, feedback transposed convs, learnable
  rates) on 28x28 grey Fashion-MNIST, a stratified ``--train-subset`` of the 55,000 training
  images, ``--pcn-epochs`` epochs of Adam at batch 128, trained with ``--train-cycles`` cycles.
  WNS arms project the feedforward convs to ``FF`` and the feedback transposed convs to ``FB``
  (``--pcn-bounds``, operator norms on their inputs' shapes, one power iteration per step plus the
  near-bound check). After training:

  - test accuracy after ``--train-cycles`` cycles on the full 10,000-image test set;
  - the long run: ``--eval-cycles`` cycles on a fixed, class-stratified ``--trajectory-images``
    of the test images (the same images for every arm and seed; all 10,000 with ``--full``):
    accuracy of the readout after every cycle, the state change per example
    ``sqrt(mean_images ||r(t) - r(t-1)||^2)`` (all layers), the relative change
    ``||r(t) - r(t-1)|| / ||r(t)||`` and the state norm per example. The long run is in float32:
    a state change that overflows is capped at float32's largest value for the verdicts (which
    can only understate a divergence) and shown as a dash in the table.

- **RNN on the adding problem** (the recurrent-length half of the claim, which Fashion-MNIST has
  no natural form of: its row sequences are all 28 steps long): a tanh ``SequenceModel`` trained
  on sequences of ``--train-len`` steps; WNS projects ``weight_hh`` to ``--rnn-bound``. After
  training: test MSE on fresh adding sequences of each length in ``--eval-lens``, and the
  stability check (``functional.contraction_check``): two random initial states, the same test
  inputs of the longest length, distance after every step.

Verdicts (``_protocol.compare``, paired by seed, 95% t-interval), for each WNS arm of the PCN:
accuracy at the trained cycle count not worse than unconstrained (margin ``ACCURACY_MARGIN``);
state change at the last cycle lower than unconstrained, and lower than its own at the trained
cycle count (the states settle); accuracy at the last cycle higher than unconstrained, and within
``ACCURACY_MARGIN`` of its own at the trained cycle count (accuracy holds). For the unconstrained
PCN: its state change grows from the trained to the last cycle. For the RNN: MSE at the trained
length not worse (margin ``MSE_MARGIN``) and MSE at the longest length lower. State changes are
compared as log10.

Default budget (the numbers are the defaults): 12,000 training images, 8 epochs, 3 arms x 3 seeds
of the PCN plus 2 arms x 3 seeds of the RNN in 2 worker processes x 1 thread: about 20 minutes on
2 CPU cores. ``--full`` (for a GPU): all 55,000 training images, 20 epochs, the long run on all
10,000 test images.

Writes ``benchmarks/results/weight_norm_supervision_claim.json`` and
``docs/assets/results/weight_norm_supervision_claim.png``.

Usage::

    python benchmarks/weight_norm_supervision_claim.py                 # ~20 min, 2 x 1 thread
    python benchmarks/weight_norm_supervision_claim.py --full --accelerator gpu
    python benchmarks/weight_norm_supervision_claim.py --quick --workers 1   # smoke run (~2 min)
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable, Sequence
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

from lightning_dnn_tricks.callbacks import NormGroup, WeightNormSupervision
from lightning_dnn_tricks.data import FashionMNISTDataModule, make_adding_problem
from lightning_dnn_tricks.functional import contraction_check, rnn_step, tanh_rnn_norms
from lightning_dnn_tricks.models import PredictiveCodingNetwork, SequenceModel

NAME = "weight_norm_supervision_claim"
BASELINE = "unconstrained"
RNN_ARMS = (BASELINE, "WNS")
#: "Similar accuracy in the trained regime" and "accuracy holds": within this (0-1 scale).
ACCURACY_MARGIN = 0.01
#: "Similar accuracy in the trained regime" for the RNN: test MSE at most this much higher.
MSE_MARGIN = 0.01
#: log10 of float32's largest value: where an overflowed state change is capped for the verdicts.
LOG10_CAP = math.log10(torch.finfo(torch.float32).max)
#: Images per batch of the evaluation passes.
EVAL_BATCH = 500
#: Power iterations of the diagnostic operator-norm estimate after training.
NORM_ITERATIONS = 200
#: The Fashion-MNIST images are 28x28 grey.
IMAGE_SHAPE = (1, 28, 28)
FULL_TEST = 10_000


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_protocol_arguments(parser)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--workers", type=int, default=2, help="runs in parallel processes")
    parser.add_argument(
        "--train-subset", type=int, default=12_000, help="training images (of 55,000; 0: all)"
    )
    parser.add_argument("--pcn-epochs", type=int, default=8)
    parser.add_argument("--pcn-batch-size", type=int, default=128)
    parser.add_argument("--pcn-channels", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--pcn-strides", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--train-cycles", type=int, default=3)
    parser.add_argument("--eval-cycles", type=int, default=100)
    parser.add_argument(
        "--trajectory-images",
        type=int,
        default=2000,
        help="test images of the long run (class-stratified, fixed; 10000: all)",
    )
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
    parser.add_argument("--quick", action="store_true", help="smoke run (~2 min, 3 seeds)")
    args = parser.parse_args(argv)
    check_protocol_arguments(args)
    args.test_images, args.val_batches, args.norm_iterations = FULL_TEST, 1.0, NORM_ITERATIONS
    if args.full:
        args.train_subset, args.pcn_epochs, args.trajectory_images = None, 20, FULL_TEST
    if args.quick:
        args.train_subset, args.pcn_epochs, args.rnn_epochs = 500, 1, 1
        args.eval_cycles, args.trajectory_images, args.test_images = 8, 200, 500
        args.eval_lens, args.num_train, args.val_batches, args.norm_iterations = (
            [10, 40],
            500,
            4,
            30,
        )
    args.trajectory_images = min(args.trajectory_images, FULL_TEST)
    if args.train_subset is not None and not 0 < args.train_subset < 55_000:
        args.train_subset = None
    return args


def pcn_arms(args: argparse.Namespace) -> dict[str, tuple[float, float] | None]:
    """PCN arm label -> (feedforward bound, feedback bound), ``None`` for the unconstrained arm."""
    arms: dict[str, tuple[float, float] | None] = {BASELINE: None}
    for text in args.pcn_bounds:
        ff, fb = (float(value) for value in text.split(":"))
        arms[f"WNS ff<={ff:g} fb<={fb:g}"] = (ff, fb)
    return arms


def wns_callback(groups: list[NormGroup]) -> WeightNormSupervision:
    return WeightNormSupervision(groups=groups, iterations=1)


def device_of(args: argparse.Namespace) -> torch.device:
    gpu = args.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    return torch.device("cuda" if gpu else "cpu")


# --------------------------------------------------------------------------- PCN
@dataclass
class PcnResult:
    arm: str
    seed: int
    val_acc: float
    #: Test accuracy after 0..train_cycles cycles on the ``test_images`` (full) test set.
    test_acc_by_cycle: list[float]
    #: On the trajectory subset, after 0..eval_cycles cycles.
    acc_by_cycle: list[float]
    #: sqrt(mean_images ||r(t) - r(t-1)||^2), t = 1..eval_cycles (inf/nan once it overflows).
    change_by_cycle: list[float]
    relative_change_by_cycle: list[float]
    state_norm_by_cycle: list[float]
    norms: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0

    def log_change(self, cycle: int) -> float:
        """log10 of the state change at ``cycle`` (>= 1), capped at float32's overflow."""
        value = self.change_by_cycle[cycle - 1]
        if not math.isfinite(value):
            return LOG10_CAP
        return min(math.log10(max(value, 1e-300)), LOG10_CAP)


def trajectory_indices(labels: torch.Tensor, count: int) -> torch.Tensor:
    """A fixed, class-stratified subset of ``count`` test indices (all when ``count`` >= len)."""
    if count >= len(labels):
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(12_345)
    classes = torch.unique(labels)
    chosen = []
    for k, label in enumerate(classes):
        members = torch.nonzero(labels == label).squeeze(1)
        take = count // len(classes) + (k < count % len(classes))
        chosen.append(members[torch.randperm(len(members), generator=generator)[:take]])
    return torch.cat(chosen).sort().values


def operator_norm(
    apply: Callable[[torch.Tensor], torch.Tensor], shape: tuple[int, ...], iterations: int
) -> float:
    """Largest singular value of the linear map ``apply`` on ``shape``, by power iteration
    through autograd's adjoint (independent of the callback's estimator)."""
    generator = torch.Generator().manual_seed(0)
    v = torch.randn(1, *shape, generator=generator)
    v /= v.norm()
    sigma = 0.0
    for _ in range(iterations):
        u, vjp = torch.func.vjp(apply, v)
        sigma = float(u.detach().norm())
        (w,) = vjp(u)
        v = w / w.norm().clamp_min(1e-30)
    return sigma


@torch.no_grad()
def evaluate_pcn(
    model: PredictiveCodingNetwork, x: torch.Tensor, y: torch.Tensor, cycles: int, device: Any
) -> dict[str, list[float]]:
    """Accuracy after 0..cycles cycles and the state changes of cycles 1..cycles, in batches."""
    correct = [0.0] * (cycles + 1)
    squared_change = [0.0] * cycles
    squared_state = [0.0] * (cycles + 1)
    for start in range(0, len(x), EVAL_BATCH):
        xb = x[start : start + EVAL_BATCH].to(device)
        yb = y[start : start + EVAL_BATCH].to(device)
        states = model.initial_states(xb)
        for cycle in range(cycles + 1):
            if cycle:
                new = model.cycle(xb, states)
                squared_change[cycle - 1] += sum(
                    float(((a.double() - b.double()) ** 2).sum())
                    for a, b in zip(new, states, strict=True)
                )
                states = new
            squared_state[cycle] += sum(float((s.double() ** 2).sum()) for s in states)
            correct[cycle] += float((model.readout(states).argmax(1) == yb).sum())
    n = len(x)
    change = [math.sqrt(s / n) if math.isfinite(s) else math.inf for s in squared_change]
    norm = [math.sqrt(s / n) if math.isfinite(s) else math.inf for s in squared_state]
    relative = [
        c / s if math.isfinite(c) and math.isfinite(s) and s > 0 else math.nan
        for c, s in zip(change, norm[1:], strict=True)
    ]
    return {
        "acc": [c / n for c in correct],
        "change": change,
        "relative": relative,
        "norm": norm,
    }


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
    data = FashionMNISTDataModule(
        data_dir=args.data_dir,
        batch_size=args.pcn_batch_size,
        image_size=28,
        channels=1,
        train_subset=args.train_subset,
        seed=seed,
    )
    trainer = pl.Trainer(
        max_epochs=args.pcn_epochs,
        callbacks=callbacks,
        check_val_every_n_epoch=args.pcn_epochs,  # validate once, at the end
        num_sanity_val_steps=0,
        limit_val_batches=args.val_batches,
        **trainer_kwargs(args.accelerator, args.devices),
    )
    trainer.fit(model, datamodule=data)
    val_acc = float(trainer.callback_metrics["val/acc"])
    device = device_of(args)
    model = model.to(device).eval()
    x, y = data.splits.test.tensors
    test = evaluate_pcn(
        model, x[: args.test_images], y[: args.test_images], args.train_cycles, device
    )
    keep = trajectory_indices(y, args.trajectory_images)
    long = evaluate_pcn(model, x[keep], y[keep], args.eval_cycles, device)
    model = model.cpu()
    norms = {}
    shape: tuple[int, ...] = IMAGE_SHAPE
    with torch.enable_grad():
        for i, (ff, fb) in enumerate(zip(model.feedforward, model.feedback, strict=True)):
            out_shape = tuple(ff(torch.zeros(1, *shape)).shape[1:])
            size = list(shape[1:])
            norms[f"ff{i}"] = operator_norm(ff, shape, args.norm_iterations)
            fb_map = partial(fb, output_size=size)
            norms[f"fb{i}"] = operator_norm(fb_map, out_shape, args.norm_iterations)
            shape = out_shape
    for i, rate in enumerate(model.feedforward_rates):
        norms[f"b{i}_max"] = float(F.relu(rate.detach()).max())
    return PcnResult(
        arm,
        seed,
        val_acc,
        test["acc"],
        long["acc"],
        long["change"],
        long["relative"],
        long["norm"],
        norms,
        time.perf_counter() - start,
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
    """Adding-problem sequences of one length (train only), seeded."""

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
    trainer = pl.Trainer(
        max_epochs=args.rnn_epochs,
        callbacks=callbacks,
        **trainer_kwargs(args.accelerator, args.devices),
    )
    trainer.fit(model, datamodule=AddingData(args.train_len, args.num_train, seed))
    model = model.cpu().eval()
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


def run_item(item: tuple[str, str, int], args: argparse.Namespace) -> PcnResult | RnnResult:
    """One run (module level, so that worker processes can receive it)."""
    kind, arm, seed = item
    return train_pcn(arm, seed, args) if kind == "pcn" else train_rnn(arm, seed, args)


# --------------------------------------------------------------------------- verdicts
def comparisons(
    pcn: list[PcnResult], rnn: list[RnnResult], args: argparse.Namespace
) -> list[tuple[str, str, Comparison]]:
    """(claim in words, metric, comparison) for every claim, paired by seed."""

    def by_seed(results: Sequence[Any], arm: str, value: Callable[[Any], float]) -> dict:
        return {r.seed: value(r) for r in results if r.arm == arm}

    trained, last = args.train_cycles, args.eval_cycles
    subset = (
        "all 10,000 test images"
        if args.trajectory_images >= FULL_TEST
        else f"the fixed {args.trajectory_images:,} test images of the long run"
    )
    test = f"{args.test_images:,} test images" if args.test_images < FULL_TEST else "10,000"
    acc_trained = f"test accuracy after {trained} cycles ({test})"
    change = f"log10 state change per example at cycle {{}} ({subset})"
    acc_long = f"test accuracy after {{}} cycles ({subset})"
    out: list[tuple[str, str, Comparison]] = []
    base_acc = by_seed(pcn, BASELINE, lambda r: r.test_acc_by_cycle[trained])
    base_change = by_seed(pcn, BASELINE, lambda r: r.log_change(last))
    base_long = by_seed(pcn, BASELINE, lambda r: r.acc_by_cycle[last])
    for arm in list(pcn_arms(args))[1:]:
        arm_change = by_seed(pcn, arm, lambda r: r.log_change(last))
        arm_long = by_seed(pcn, arm, lambda r: r.acc_by_cycle[last])
        out += [
            (
                f"PCN, {arm}: accuracy in the trained regime ({trained} cycles) is not worse "
                f"than the unconstrained PCN's (margin {ACCURACY_MARGIN})",
                acc_trained,
                compare(
                    arm,
                    by_seed(pcn, arm, lambda r: r.test_acc_by_cycle[trained]),
                    BASELINE,
                    base_acc,
                    claim="not_worse",
                    margin=ACCURACY_MARGIN,
                ),
            ),
            (
                f"PCN, {arm}: the state change after {last} cycles is smaller than the "
                "unconstrained PCN's",
                change.format(last),
                compare(arm, arm_change, BASELINE, base_change, higher_is_better=False),
            ),
            (
                f"PCN, {arm}: the state change shrinks from cycle {trained} to cycle {last} "
                "(the states settle)",
                f"log10 state change per example, cycle {last} vs cycle {trained} ({subset})",
                compare(
                    f"{arm}, cycle {last}",
                    arm_change,
                    f"{arm}, cycle {trained}",
                    by_seed(pcn, arm, lambda r: r.log_change(trained)),
                    higher_is_better=False,
                ),
            ),
            (
                f"PCN, {arm}: accuracy after {last} cycles is higher than the unconstrained PCN's",
                acc_long.format(last),
                compare(arm, arm_long, BASELINE, base_long),
            ),
            (
                f"PCN, {arm}: accuracy holds from {trained} to {last} cycles (within "
                f"{ACCURACY_MARGIN})",
                f"test accuracy after {last} vs {trained} cycles ({subset})",
                compare(
                    f"{arm}, {last} cycles",
                    arm_long,
                    f"{arm}, {trained} cycles",
                    by_seed(pcn, arm, lambda r: r.acc_by_cycle[trained]),
                    claim="not_worse",
                    margin=ACCURACY_MARGIN,
                ),
            ),
        ]
    out.append(
        (
            f"PCN, unconstrained: the state change grows from cycle {trained} to cycle {last} "
            "(the states drift)",
            f"log10 state change per example, cycle {last} vs cycle {trained} ({subset})",
            compare(
                f"{BASELINE}, cycle {last}",
                base_change,
                f"{BASELINE}, cycle {trained}",
                by_seed(pcn, BASELINE, lambda r: r.log_change(trained)),
            ),
        )
    )
    n = len(args.eval_lens) - 1
    trained_len = args.eval_lens.index(args.train_len) if args.train_len in args.eval_lens else 0
    out += [
        (
            f"RNN, WNS (||W_hh|| <= {args.rnn_bound:g}): test MSE at the trained length "
            f"{args.eval_lens[trained_len]} is not worse than unconstrained (margin {MSE_MARGIN})",
            f"adding problem: test MSE at length {args.eval_lens[trained_len]} (1,000 sequences)",
            compare(
                "WNS",
                by_seed(rnn, "WNS", lambda r: r.mse_by_len[trained_len]),
                BASELINE,
                by_seed(rnn, BASELINE, lambda r: r.mse_by_len[trained_len]),
                claim="not_worse",
                higher_is_better=False,
                margin=MSE_MARGIN,
            ),
        ),
        (
            f"RNN, WNS (||W_hh|| <= {args.rnn_bound:g}): test MSE at length "
            f"{args.eval_lens[n]} is lower than unconstrained",
            f"adding problem: test MSE at length {args.eval_lens[n]} (1,000 sequences)",
            compare(
                "WNS",
                by_seed(rnn, "WNS", lambda r: r.mse_by_len[n]),
                BASELINE,
                by_seed(rnn, BASELINE, lambda r: r.mse_by_len[n]),
                higher_is_better=False,
            ),
        ),
    ]
    return out


# --------------------------------------------------------------------------- report
def _mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


def _cell(value: float | None) -> float | None:
    """A table cell: 4 significant digits; ``None`` (rendered as a dash) when not finite."""
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.4g}")


def _geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean; inf when a value is not finite (overflowed)."""
    if not all(math.isfinite(v) for v in values):
        return math.inf
    return 10 ** _mean([math.log10(max(v, 1e-300)) for v in values])


def _text(value: float) -> str:
    return f"{value:.3g}" if math.isfinite(value) else "overflowed (float32)"


def pcn_title(args: argparse.Namespace) -> str:
    images = "55,000" if args.train_subset is None else f"{args.train_subset:,}"
    return (
        f"PCN {args.pcn_channels} on Fashion-MNIST ({images} training images, "
        f"{args.pcn_epochs} epoch{'s' * (args.pcn_epochs != 1)}, {args.train_cycles} cycles)"
    )


def plot(pcn: list[PcnResult], rnn: list[RnnResult], path: Path, args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = ["tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange"]
    colors = dict(zip(pcn_arms(args), palette, strict=False))
    colors["WNS"] = "tab:blue"
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5), constrained_layout=True)
    cycles = list(range(args.eval_cycles + 1))
    for result in pcn:
        label = result.arm if result.seed == args.seeds[0] else None
        color = colors[result.arm]
        change = [c if math.isfinite(c) else math.nan for c in result.change_by_cycle]
        axes[0, 0].plot(cycles, result.acc_by_cycle, color=color, alpha=0.7, label=label)
        axes[0, 1].plot(cycles[1:], change, color=color, alpha=0.7, label=label)
    axes[0, 0].axhline(0.1, color="0.3", ls="--", lw=1, label="chance (0.1)")
    for ax in axes[0]:
        ax.axvline(args.train_cycles, color="0.5", ls=":", lw=1)
        ax.set_xscale("symlog", linthresh=1)
        ax.set_xlim(left=0)
        ax.set_xlabel("cycles at evaluation (dotted: trained)")
        ax.legend(fontsize=8)
    images = f"{args.trajectory_images:,} test images"
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 0].set_title(f"(a) PCN: accuracy after each cycle ({images})", fontsize=10)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_ylabel("state change per example, sqrt(mean ||r(t) - r(t-1)||^2)")
    axes[0, 1].set_title(
        "(b) PCN: state change per cycle (line ends: float32 overflow)", fontsize=10
    )
    for result in rnn:
        label = result.arm if result.seed == args.seeds[0] else None
        color = colors[result.arm]
        axes[1, 0].plot(
            args.eval_lens, result.mse_by_len, "o-", color=color, alpha=0.7, label=label
        )
        axes[1, 1].plot(result.distances, color=color, alpha=0.7, label=label)
    if rnn:
        start = _mean([r.distances[0] for r in rnn])
        axes[1, 1].axhline(start, color="0.3", ls="--", lw=1, label="initial distance")
    axes[1, 0].axvline(args.train_len, color="0.5", ls=":", lw=1)
    axes[1, 0].axhline(1 / 6, color="0.3", ls="--", lw=1, label="predict 1 (MSE 1/6)")
    axes[1, 0].set_xscale("log")
    axes[1, 0].set_yscale("log")
    axes[1, 0].set_xlabel("sequence length at evaluation (dotted: trained)")
    axes[1, 0].set_ylabel("test MSE (1,000 sequences)")
    axes[1, 0].set_title(
        f"(c) tanh RNN ({args.rnn_hidden} units), adding problem: test MSE", fontsize=10
    )
    axes[1, 0].legend(fontsize=8)
    axes[1, 1].set_yscale("log")
    axes[1, 1].set_xlabel("step")
    axes[1, 1].set_ylabel("||h_a(t) - h_b(t)||")
    axes[1, 1].set_title("(d) RNN: two initial states, same inputs", fontsize=10)
    axes[1, 1].legend(fontsize=8)
    seeds = ", ".join(str(s) for s in args.seeds)
    fig.suptitle(
        f"Weight Norm Supervision (our reconstruction), seeds {seeds} (one line per seed)\n"
        f"top: {pcn_title(args)}; bottom: tanh RNN, adding problem, trained on length "
        f"{args.train_len}",
        fontsize=10,
    )
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pcn_rows(pcn: list[PcnResult], args: argparse.Namespace) -> list[list[Any]]:
    """Accuracy, state change and state norm at a few cycle counts, per arm (over seeds)."""
    last = args.eval_cycles
    marks = [c for c in (0, 1, args.train_cycles, 10, 20, 50, last) if c <= last]
    test = "10,000" if args.test_images >= FULL_TEST else f"{args.test_images:,}"
    rows = []
    for arm in pcn_arms(args):
        runs = [r for r in pcn if r.arm == arm]
        acc, acc_std = mean_std([r.test_acc_by_cycle[args.train_cycles] for r in runs])
        rows.append(
            [
                "PCN Fashion-MNIST",
                arm,
                f"{args.train_cycles} cycles, {test} test images",
                round(acc, 4),
                round(acc_std, 4),
                None,
                None,
                None,
                None,
                len(runs),
            ]
        )
        for cycle in dict.fromkeys(marks):
            acc, acc_std = mean_std([r.acc_by_cycle[cycle] for r in runs])
            change = rel = None
            if cycle:
                change = _geometric_mean([r.change_by_cycle[cycle - 1] for r in runs])
                rel_values = [r.relative_change_by_cycle[cycle - 1] for r in runs]
                rel = _mean(rel_values) if all(map(math.isfinite, rel_values)) else None
            norm = _geometric_mean([r.state_norm_by_cycle[cycle] for r in runs])
            rows.append(
                [
                    "PCN Fashion-MNIST",
                    arm,
                    f"{cycle} cycles, {args.trajectory_images:,} test images",
                    round(acc, 4),
                    round(acc_std, 4),
                    _cell(change),
                    _cell(rel),
                    _cell(norm),
                    None,
                    len(runs),
                ]
            )
    return rows


def rnn_rows(rnn: list[RnnResult], args: argparse.Namespace) -> list[list[Any]]:
    rows = []
    for arm in RNN_ARMS:
        runs = [r for r in rnn if r.arm == arm]
        for i, length in enumerate(args.eval_lens):
            acc, acc_std = mean_std([r.acc_by_len[i] for r in runs])
            mse = _mean([r.mse_by_len[i] for r in runs])
            rows.append(
                [
                    "RNN adding problem",
                    arm,
                    f"length {length}",
                    round(acc, 4),
                    round(acc_std, 4),
                    None,
                    None,
                    None,
                    float(f"{mse:.4g}"),
                    len(runs),
                ]
            )
    return rows


def summary(pcn: list[PcnResult], rnn: list[RnnResult], args: argparse.Namespace) -> str:
    """The notes' measured sentences (every number from this run)."""

    def pcn_mean(arm: str, attr: str, index: int) -> float:
        return _mean([getattr(r, attr)[index] for r in pcn if r.arm == arm])

    def change(arm: str, cycle: int) -> float:
        return _geometric_mean([r.change_by_cycle[cycle - 1] for r in pcn if r.arm == arm])

    trained, last = args.train_cycles, args.eval_cycles
    mid = min(10, last)
    parts = []
    for arm in pcn_arms(args):
        runs = [r for r in pcn if r.arm == arm]
        overflowed = sum(not math.isfinite(r.change_by_cycle[-1]) for r in runs)
        parts.append(
            f"PCN {arm}: validation accuracy {_mean([r.val_acc for r in runs]):.4f}, test "
            f"accuracy {pcn_mean(arm, 'test_acc_by_cycle', trained):.4f} after {trained} "
            f"cycles ({args.test_images:,} images); on the long run "
            f"{pcn_mean(arm, 'acc_by_cycle', trained):.4f} at {trained}, "
            f"{pcn_mean(arm, 'acc_by_cycle', mid):.4f} at {mid}, "
            f"{pcn_mean(arm, 'acc_by_cycle', last):.4f} at {last} cycles; state change per "
            f"example {_text(change(arm, trained))} at cycle {trained}, "
            f"{_text(change(arm, last))} at cycle {last} (geometric mean over seeds; "
            f"{overflowed} of {len(runs)} seeds overflowed float32)."
        )
    for arm in pcn_arms(args):
        runs = [r for r in pcn if r.arm == arm]
        keys = sorted(runs[0].norms)
        means = ", ".join(f"{k} {_mean([r.norms[k] for r in runs]):.3g}" for k in keys)
        parts.append(
            f"PCN {arm}: operator norms (ff: feedforward, fb: feedback) and largest "
            f"feedforward rate b, mean over seeds: {means}."
        )
    n = len(args.eval_lens) - 1
    ratios = {
        arm: _mean([r.distances[-1] / r.distances[0] for r in rnn if r.arm == arm])
        for arm in RNN_ARMS
    }

    def rnn_mean(arm: str, index: int) -> float:
        return _mean([r.mse_by_len[index] for r in rnn if r.arm == arm])

    parts.append(
        f"RNN trained on length {args.train_len}: test MSE at length {args.eval_lens[0]} "
        f"{rnn_mean(BASELINE, 0):.4g} unconstrained vs {rnn_mean('WNS', 0):.4g} with WNS; at "
        f"length {args.eval_lens[n]} {rnn_mean(BASELINE, n):.4g} vs {rnn_mean('WNS', n):.4g}. "
        f"||W_hh||_2 {_mean([r.recurrent_norm for r in rnn if r.arm == BASELINE]):.3g} vs "
        f"{_mean([r.recurrent_norm for r in rnn if r.arm == 'WNS']):.3g}; distance between two "
        f"trajectories after {max(args.eval_lens)} steps over the initial one: "
        f"{ratios[BASELINE]:.3g} vs {ratios['WNS']:.3g}."
    )
    return " ".join(parts)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    init_worker(args.threads)
    started = time.perf_counter()
    items = [("pcn", arm, seed) for seed in args.seeds for arm in pcn_arms(args)]
    items += [("rnn", arm, seed) for seed in args.seeds for arm in RNN_ARMS]
    console.print(
        f"[bold]{NAME}[/]: {len(items)} runs in {args.workers} process(es) x {args.threads} "
        f"thread(s); {pcn_title(args)} -> {args.eval_cycles} cycles; RNN {args.rnn_epochs} "
        f"epochs (length {args.train_len} -> {args.eval_lens})"
    )
    pcn: list[PcnResult] = []
    rnn: list[RnnResult] = []

    def on_result(result: PcnResult | RnnResult) -> None:
        if isinstance(result, PcnResult):
            pcn.append(result)
            console.print(
                f"PCN {result.arm} seed {result.seed}: val {result.val_acc:.4f}, test acc "
                f"{result.test_acc_by_cycle[args.train_cycles]:.4f} at {args.train_cycles} "
                f"cycles, {result.acc_by_cycle[-1]:.4f} at {args.eval_cycles}; state change "
                f"{_text(result.change_by_cycle[args.train_cycles - 1])} -> "
                f"{_text(result.change_by_cycle[-1])}; norms "
                f"{ {k: round(v, 3) for k, v in result.norms.items()} } ({result.seconds:.0f} s)"
            )
        else:
            rnn.append(result)
            console.print(
                f"RNN {result.arm} seed {result.seed}: MSE by length "
                f"{[round(m, 4) for m in result.mse_by_len]}, ||W_hh|| "
                f"{result.recurrent_norm:.3f}, distance ratio "
                f"{result.distances[-1] / result.distances[0]:.3g} ({result.seconds:.0f} s)"
            )

    run_parallel(
        partial(run_item, args=args),
        items,
        on_result,
        workers=args.workers,
        threads=args.threads,
    )
    pcn.sort(key=lambda r: (list(pcn_arms(args)).index(r.arm), r.seed))
    rnn.sort(key=lambda r: (RNN_ARMS.index(r.arm), r.seed))
    verdicts = []
    if len(set(args.seeds)) >= 3:
        for claim, metric, comparison in comparisons(pcn, rnn, args):
            console.print(f"{claim}: {comparison.describe()}")
            verdicts.append(verdict_record(claim, comparison, metric=metric))
    else:
        console.print("fewer than 3 seeds: no verdicts (smoke run)")
    columns = [
        "model",
        "arm",
        "evaluated at",
        "test accuracy mean",
        "test accuracy std",
        "state change per example",
        "relative state change",
        "state norm per example",
        "test MSE (RNN)",
        "seeds",
    ]
    rows = pcn_rows(pcn, args) + rnn_rows(rnn, args)
    wall = time.perf_counter() - started
    images = "all 55,000" if args.train_subset is None else f"{args.train_subset:,} (stratified)"
    settings = {
        "seeds": args.seeds,
        "torch_threads": args.threads,
        "workers": args.workers,
        **device_settings(args),
        "pcn": {
            "model": f"PredictiveCodingNetwork(hidden_channels={args.pcn_channels}, "
            f"strides={args.pcn_strides}, kernel_size=3, cycles={args.train_cycles})",
            "data": "FashionMNISTDataModule(image_size=28, channels=1, seed=SEED), "
            f"{images} training images, batch {args.pcn_batch_size}; validation (5,000) once, "
            "at the end",
            "optimizer": f"Adam(lr={args.pcn_lr})",
            "epochs": args.pcn_epochs,
            "train_cycles": args.train_cycles,
            "eval_cycles": args.eval_cycles,
            "test_images_trained_regime": args.test_images,
            "trajectory_images": f"{args.trajectory_images} (class-stratified, the same for "
            "every arm and seed), float32; an overflowed state change is capped at "
            f"10^{LOG10_CAP:.2f} for the verdicts",
            "wns_arms": "feedforward convs (feedforward.*.weight) and feedback transposed convs "
            f"(feedback.*.weight) projected to FF:FB = {args.pcn_bounds} ({args.pcn_estimate} "
            "norms), 1 power iteration per step and the near-bound check",
            "operator_norms": f"after training, {NORM_ITERATIONS} power iterations through "
            "autograd's adjoint on the layer's input shape",
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
        "margins": {"accuracy": ACCURACY_MARGIN, "rnn_mse": MSE_MARGIN},
        "full": args.full,
        "quick": args.quick,
        "wall_minutes": round(wall / 60, 1),
    }
    notes = (
        f"{summary(pcn, rnn, args)} PCN accuracy is top-1; the state change per example is "
        "sqrt(mean over images of ||r(t) - r(t-1)||^2) over all layers (geometric mean over "
        "seeds; a dash where a seed's states overflowed float32). RNN accuracy is the share "
        "of test sequences predicted within 0.1. "
        f"{overhead_summary('weight_norm_supervision')} Wall time {wall / 60:.1f} min."
    )
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
    plot(pcn, rnn, figure, args)
    console.print(notes)
    console.print(f"wrote {shown(path)} and {shown(figure)}")


if __name__ == "__main__":
    main()
