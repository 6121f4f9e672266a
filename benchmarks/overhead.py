"""Per-step time overhead of every registered trick on a timm backbone (CPU, random data).

Runs a baseline Lightning fit and one fit per trick, interleaved in one process: ``R`` rounds of
``[baseline, trick 1, ..., trick k, ...]`` (the order rotated every round) so that machine
drift affects all of them alike. A trick whose whole cost lies in per-step callback hooks
(``hooks_only``) gets one more fit per round that runs those hooks on odd steps only, so steps
with and without it are compared a few hundred milliseconds apart. Each fit builds a fresh model
from the same seed and trains ``S`` steps on fixed random tensors (no data-loading cost); a timing
callback measures each training step (``on_train_batch_start`` to ``on_train_batch_end``) and the
first steps of every fit are discarded.

Timings taken while other processes compete for our cores are worthless (on a small shared machine
a 2-thread run slows down several-fold), so each round first waits until other processes leave
the cores our threads need free, and a round during which they used more than the spare cores
plus ``--busy-threshold`` of the CPUs is run again.

Reports the median step time of the baseline and of each trick over all kept steps, their ratio
with a 95% bootstrap interval (rounds resampled), the alternating-step ratio, and the time spent
inside the trick's own per-step callback hooks. Writes ``benchmarks/results/overhead.json``.

Usage::

    python benchmarks/overhead.py            # defaults: resnet18, 32x32 RGB, batch 64 (~3-4 min)
    python benchmarks/overhead.py --quick    # smoke run (~30 s)

Every registered trick needs an entry in ``CASES`` (how to build it for this model); a trick
without one stops the script before anything runs.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from _common import (
    OtherLoad,
    TrickStepTimer,
    bootstrap_interval,
    console,
    progress,
    quiet_lightning,
    shown,
    trainer_kwargs,
    wait_until_quiet,
    write_results,
)
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import OptimizerCallable
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn_tricks import list_tricks
from lightning_dnn_tricks.callbacks import (
    BNSR,
    AcceleratedIMP,
    AdaptiveImportanceSampling,
    IterativeMagnitudePruning,
    NormGroup,
    NormLoss,
    OptimizerSupport,
    WeightAlign,
    WeightNormSupervision,
)
from lightning_dnn_tricks.models import TimmClassifier
from lightning_dnn_tricks.optim import SGDG2, FrankWolfe

BASELINE = "baseline"


@dataclass
class TrickSetup:
    """What one trick adds to the baseline run: callbacks and/or a replacement optimizer."""

    callbacks: list[Callback] = field(default_factory=list)
    optimizer: OptimizerCallable | None = None


@dataclass(frozen=True)
class OverheadCase:
    """How to build a trick for the benchmark model, and what to check.

    Attributes:
        build: returns the trick's callbacks/optimizer for one fit.
        max_ratio: the largest acceptable step-time ratio (``None``: no target).
        hooks_only: the trick's whole per-step cost is in per-step callback hooks (no structural
            change, no optimizer), so it is also measured by running those hooks on alternate
            steps of one fit.
        baseline: builds the fit this case is compared with when the shared AdamW baseline is
            not the right reference (SGD-G2 against plain SGD); ``None``: the shared baseline.
    """

    build: Callable[[], TrickSetup]
    max_ratio: float | None = None
    hooks_only: bool = False
    baseline: Callable[[], TrickSetup] | None = None


#: trick name (or "name (variant)") -> how to build it for the benchmark. A registered trick
#: missing here is an error.
CASES: dict[str, OverheadCase] = {
    # Pruning: the per-step cost is the mask enforcement (masked gradients, then weights and
    # momentum re-zeroed by an optimizer step post-hook, which the alternating-steps measurement
    # cannot gate: hooks_only=False). It does not depend on the sparsity; rounds are long enough
    # that no pruning round (a once-per-round cost) falls inside the measured steps.
    "iterative_pruning": OverheadCase(
        build=lambda: TrickSetup(
            callbacks=[IterativeMagnitudePruning(epochs_per_round=1000, verbose=False)]
        ),
        max_ratio=1.05,
    ),
    "accelerated_pruning": OverheadCase(
        build=lambda: TrickSetup(callbacks=[AcceleratedIMP(epochs_per_round=1000, verbose=False)]),
        max_ratio=1.05,
    ),
    # Optimizers (issue 5). SGD-G2 is compared with plain SGD at the same lr (two gradient
    # evaluations per step: 2.0x is the floor); FW-RNN (K=5, AdamW base without weight decay)
    # with the shared AdamW baseline. OptimizerSupport is the Lightning path users get.
    "sgdg2": OverheadCase(
        build=lambda: TrickSetup(
            callbacks=[OptimizerSupport()], optimizer=partial(SGDG2, lr=1e-3, h_max=1.0)
        ),
        max_ratio=2.1,
        baseline=lambda: TrickSetup(optimizer=partial(torch.optim.SGD, lr=1e-3)),
    ),
    "frank_wolfe": OverheadCase(
        build=lambda: TrickSetup(
            callbacks=[OptimizerSupport()],
            optimizer=partial(
                FrankWolfe,
                lr=1e-3,
                inner_steps=5,
                base_optimizer=torch.optim.AdamW,
                base_kwargs={"weight_decay": 0.0},
            ),
        ),
        max_ratio=1.05,
    ),
    "norm_loss": OverheadCase(
        build=lambda: TrickSetup(callbacks=[NormLoss(strength=5e-3)]),
        max_ratio=1.03,
        hooks_only=True,
    ),
    "weight_align": OverheadCase(
        build=lambda: TrickSetup(callbacks=[WeightAlign()]), max_ratio=1.15
    ),
    "bnsr": OverheadCase(build=lambda: TrickSetup(callbacks=[BNSR()]), max_ratio=1.20),
    # Every conv/linear weight projected (the default mode): 1 power iteration per step through
    # each conv operator on its input shape, after the optimizer step (a step post-hook, so the
    # alternating-step method does not apply).
    "weight_norm_supervision": OverheadCase(
        build=lambda: TrickSetup(
            callbacks=[WeightNormSupervision(groups=[NormGroup("all", bound=1.0, mode="project")])]
        ),
        max_ratio=1.10,
    ),
    # Adaptive importance sampling, default logit_grad score: the weighted loss, the scores from
    # the logits and the per-batch score update (the sampler's draw and the collate run in data
    # loading, outside the timed step).
    "importance_sampling": OverheadCase(
        build=lambda: TrickSetup(callbacks=[AdaptiveImportanceSampling()]),
        max_ratio=1.10,
    ),
    "bnsr (compiled)": OverheadCase(
        build=lambda: TrickSetup(callbacks=[BNSR(compiled=True)]),
        max_ratio=1.20,
    ),
}


@dataclass(frozen=True)
class Run:
    """One kind of fit in a round: the baseline, a trick, or a trick on alternate steps."""

    trick: str | None = None
    alternating: bool = False
    own_baseline: bool = False  # the case's own baseline fit (OverheadCase.baseline)

    @property
    def label(self) -> str:
        if self.trick is None:
            return BASELINE
        if self.own_baseline:
            return f"{self.trick} (its baseline)"
        return f"{self.trick} (alternating steps)" if self.alternating else self.trick


@dataclass(frozen=True)
class FitTimes:
    """Kept (post warm-up) per-step seconds of one fit, trick-hook seconds, step parity."""

    steps: list[float]
    hooks: list[float]
    odd_step: list[bool]

    def split(self) -> tuple[list[float], list[float]]:
        """Step seconds of odd and of even steps (with and without the trick when alternating)."""
        odd = [t for t, flag in zip(self.steps, self.odd_step, strict=True) if flag]
        even = [t for t, flag in zip(self.steps, self.odd_step, strict=True) if not flag]
        return odd, even


def check_cases(names: Sequence[str]) -> None:
    """Raise when a registered trick has no entry in ``CASES`` (new tricks must add one)."""
    missing = [name for name in names if name not in CASES]
    if missing:
        raise SystemExit(
            f"error: no overhead case for the registered trick(s) {', '.join(missing)}. "
            "Add an entry to CASES in benchmarks/overhead.py saying how to build each one for "
            "the benchmark model."
        )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="timm architecture")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds")
    parser.add_argument("--steps", type=int, default=20, help="training steps per fit")
    parser.add_argument("--warmup", type=int, default=4, help="steps discarded at each fit start")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: as is)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--busy-threshold",
        type=float,
        default=0.05,
        help="discard a round when other processes used the cores our threads do not need plus "
        "more than this share of the CPUs",
    )
    parser.add_argument(
        "--max-discarded", type=int, default=None, help="most rounds discarded (default: rounds)"
    )
    parser.add_argument(
        "--quiet-wait", type=float, default=30.0, help="most seconds to wait for a quiet machine"
    )
    parser.add_argument(
        "--tricks",
        nargs="+",
        default=None,
        help="only these cases: registered tricks or variants such as 'bnsr (compiled)' "
        "(default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 rounds of 12 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 3, 12, 4
        args.quiet_wait = min(args.quiet_wait, 5.0)
    if args.max_discarded is None:
        args.max_discarded = 1 if args.quick else args.rounds
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup by at least 2")
    return args


def random_loader(args: argparse.Namespace, batches: int = 8) -> DataLoader[Any]:
    """Fixed random images and labels, served in order (no augmentation, no workers)."""
    generator = torch.Generator().manual_seed(args.seed)
    count = batches * args.batch_size
    images = torch.randn(count, 3, args.image_size, args.image_size, generator=generator)
    labels = torch.randint(0, 10, (count,), generator=generator)
    return DataLoader(TensorDataset(images, labels), batch_size=args.batch_size, shuffle=False)


def timed_fit(args: argparse.Namespace, loader: DataLoader[Any], run: Run) -> FitTimes:
    """Train a fresh model (same seed every time) for ``args.steps`` steps and time each step."""
    setup = TrickSetup() if run.trick is None else CASES[run.trick].build()
    own_baseline = CASES[run.trick].baseline if run.trick is not None else None
    if run.own_baseline and own_baseline is not None:
        setup = own_baseline()
    pl.seed_everything(args.seed, verbose=False)
    optimizer = setup.optimizer or partial(torch.optim.AdamW, lr=args.lr, weight_decay=0.0)
    model = TimmClassifier(args.model, num_classes=10, in_chans=3, optimizer=optimizer)
    timer = TrickStepTimer(alternate=run.alternating)
    callbacks: list[Callback] = [timer, *(timer.instrument(cb) for cb in setup.callbacks)]
    trainer = pl.Trainer(max_steps=args.steps, callbacks=callbacks, **trainer_kwargs())
    trainer.fit(model, train_dataloaders=loader)
    keep = slice(args.warmup, None)
    return FitTimes(timer.durations[keep], timer.hook_seconds[keep], timer.odd_step[keep])


@dataclass
class Rounds:
    """The kept rounds: per run label, one :class:`FitTimes` per round."""

    fits: dict[str, list[FitTimes]]
    other_load: list[float] = field(default_factory=list)
    discarded: int = 0
    busy_kept: int = 0


def run_rounds(args: argparse.Namespace, loader: DataLoader[Any], runs: list[Run]) -> Rounds:
    """Interleave the fits of ``runs`` for ``args.rounds`` rounds, rotating their order.

    Before each round, wait (up to ``--quiet-wait`` s) until other processes use at most
    the allowed share of the machine (:func:`allowed_other_share`); a round during which they used
    more is discarded and run again, up to ``--max-discarded`` times (later busy rounds are kept
    and counted).
    """
    allowed = allowed_other_share(args.busy_threshold)
    result = Rounds({run.label: [] for run in runs})
    with progress() as bar:
        task = bar.add_task("fits", total=args.rounds * len(runs))
        while len(result.fits[BASELINE]) < args.rounds:
            done = len(result.fits[BASELINE])
            shift = done % len(runs)  # rotate: every run goes first equally often
            order = runs[shift:] + runs[:shift]
            bar.update(task, description=f"round {done + 1}: waiting for a quiet machine")
            wait_until_quiet(allowed, args.quiet_wait)
            fits: dict[str, FitTimes] = {}
            shares: list[float] = []
            for run in order:
                bar.update(task, description=f"round {done + 1}: {run.label}")
                with OtherLoad() as load:
                    fits[run.label] = timed_fit(args, loader, run)
                shares.append(0.0 if load.share is None else load.share)
            busy = max(shares) > allowed
            line = round_line(fits, runs)
            if busy and result.discarded < args.max_discarded:
                result.discarded += 1
                bar.console.print(
                    f"[yellow]round {done + 1} discarded[/] (other processes used "
                    f"{max(shares):.0%} of the CPUs): {line}"
                )
                continue
            result.busy_kept += busy
            result.other_load.append(max(shares))
            for label, times in fits.items():
                result.fits[label].append(times)
            bar.advance(task, len(runs))
            bar.console.print(
                f"round {done + 1}/{args.rounds}: {line} (other load {max(shares):.0%})"
            )
    return result


def allowed_other_share(threshold: float) -> float:
    """Share of the CPUs others may use: the cores our threads leave, plus ``threshold``."""
    cpus = os.cpu_count() or 1
    spare = max(0, cpus - torch.get_num_threads())
    return spare / cpus + threshold


def round_line(fits: dict[str, FitTimes], runs: list[Run]) -> str:
    """One round in words: median ms/step of each fit and its ratio to the baseline."""
    base = statistics.median(fits[BASELINE].steps)
    parts = [f"baseline {1e3 * base:.1f} ms"]
    for run in runs[1:]:
        times = fits[run.label]
        if run.alternating:
            on, off = times.split()
            parts.append(f"{run.label} x{statistics.median(on) / statistics.median(off):.3f}")
        else:
            median = statistics.median(times.steps)
            parts.append(f"{run.label} {1e3 * median:.1f} ms (x{median / base:.3f})")
    return "; ".join(parts)


def pooled_median(groups: Sequence[list[float]]) -> float:
    return statistics.median(value for values in groups for value in values)


def ratio_with_interval(
    pairs: Sequence[tuple[list[float], list[float]]],
) -> tuple[float, tuple[float, float]]:
    """Pooled-median ratio of (with, without) step times, and its bootstrap interval (rounds)."""

    def ratio(sample: Sequence[tuple[list[float], list[float]]]) -> float:
        return pooled_median([w for w, _ in sample]) / pooled_median([b for _, b in sample])

    return ratio(pairs), bootstrap_interval(pairs, ratio)


def verdict(value: float | None, target: float | None) -> str:
    if value is None or target is None:
        return "n/a"
    return "yes" if value <= target else "no"


def summarise(name: str, rounds: Rounds) -> list[Any]:
    """One result row for trick ``name``."""
    case = CASES[name]
    base_label = Run(name, own_baseline=True).label if case.baseline else BASELINE
    base, full = rounds.fits[base_label], rounds.fits[name]
    fit_ratio, (fit_low, fit_high) = ratio_with_interval(
        [(t.steps, b.steps) for t, b in zip(full, base, strict=True)]
    )
    alt_ratio: float | None = None
    alt_interval = "n/a"
    if case.hooks_only:
        alternating = rounds.fits[Run(name, alternating=True).label]
        alt_ratio, (alt_low, alt_high) = ratio_with_interval([t.split() for t in alternating])
        alt_interval = f"[{alt_low:.4f}, {alt_high:.4f}]"
    base_ms = 1e3 * pooled_median([b.steps for b in base])
    hook_ms = 1e3 * pooled_median([t.hooks for t in full])
    return [
        name,
        round(base_ms, 2),
        round(1e3 * pooled_median([t.steps for t in full]), 2),
        round(fit_ratio, 4),
        f"[{fit_low:.4f}, {fit_high:.4f}]",
        "n/a" if alt_ratio is None else round(alt_ratio, 4),
        alt_interval,
        round(hook_ms, 3),
        round(hook_ms / base_ms, 4),
        "none" if case.max_ratio is None else f"<= {case.max_ratio}",
        f"{verdict(fit_ratio, case.max_ratio)} / {verdict(alt_ratio, case.max_ratio)}",
    ]


COLUMNS = [
    "trick",
    "baseline ms/step",
    "with trick ms/step",
    "ratio (interleaved fits)",
    "ratio 95% CI",
    "ratio (alternating steps)",
    "alternating 95% CI",
    "trick hooks ms/step",
    "hooks / baseline step",
    "target ratio",
    "target met (fits / alternating)",
]


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    quiet_lightning()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    registered = [spec.name for spec in list_tricks()]
    check_cases(registered)
    known = [name for name in CASES if name.split(" (")[0] in registered]
    names = known if args.tricks is None else args.tricks
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"error: unknown trick(s) {unknown}; known: {known}")

    load_before = os.getloadavg()
    loader = random_loader(args)
    runs = [Run(), *(Run(name) for name in names)]
    runs += [Run(name, alternating=True) for name in names if CASES[name].hooks_only]
    runs += [Run(name, own_baseline=True) for name in names if CASES[name].baseline]
    console.print(
        f"[bold]overhead[/]: {args.model}, {args.image_size}x{args.image_size} RGB, batch "
        f"{args.batch_size}, {torch.get_num_threads()} threads; {args.rounds} rounds x "
        f"{len(runs)} fits x {args.steps} steps ({args.warmup} warm-up steps discarded)"
    )
    result = run_rounds(args, loader, runs)
    rows = [summarise(name, result) for name in names]
    cells = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
    control, (control_low, control_high) = ratio_with_interval(
        [fit.split() for fit in result.fits[BASELINE]]
    )
    control_text = f"{control:.4f} [{control_low:.4f}, {control_high:.4f}]"
    settings = {
        "model": f"timm {args.model} (pretrained=False), 10 classes",
        "input": f"random fixed tensors, {args.batch_size}x3x{args.image_size}x{args.image_size}",
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={args.lr}, weight_decay=0)",
        "device": "cpu",
        "torch_threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps_per_fit": args.steps,
        "warmup_steps_discarded": args.warmup,
        "kept_steps_per_fit_kind": args.rounds * (args.steps - args.warmup),
        "other_processes_cpu_share_allowed": round(allowed_other_share(args.busy_threshold), 4),
        "rounds_discarded_as_busy": result.discarded,
        "busy_rounds_kept": result.busy_kept,
        "other_processes_cpu_share_of_kept_rounds": {
            "median": round(statistics.median(result.other_load), 4),
            "max": round(max(result.other_load), 4),
        },
        "load_average_1_5_15_min_before": [round(x, 2) for x in load_before],
        "load_average_1_5_15_min_after": [round(x, 2) for x in os.getloadavg()],
        "control_baseline_odd_over_even_steps": control_text,
        "trick_settings": {name: _describe(CASES[name].build()) for name in names},
        "quick": args.quick,
    }
    notes = (
        "Step time = on_train_batch_start to on_train_batch_end (forward, backward, trick hooks, "
        "optimizer step). Interleaved fits: each fit builds a fresh model from the same seed; "
        "baseline and trick fits rotate their order every round; the ratio is the median "
        "step time with the trick over the baseline's (all kept steps of all rounds). "
        "Alternating steps (tricks whose whole cost is in per-step callback hooks): one fit "
        "runs the trick's hooks on odd steps only, and the ratio compares those steps with the "
        "even ones, a few hundred ms apart, which cancels the slow drifts of a shared machine "
        "that the interleaved fits only average out. Intervals: 95% percentile bootstrap over "
        "rounds. 'trick hooks ms/step' is the time spent inside the trick's per-step hooks. "
        "A round during which other processes used more than "
        f"{allowed_other_share(args.busy_threshold):.0%} of the CPUs (the cores our "
        f"{torch.get_num_threads()} thread(s) leave, plus {args.busy_threshold:.0%}; from "
        f"/proc/stat) was discarded and run again ({result.discarded} discarded, "
        f"{result.busy_kept} busy rounds kept after the cap). Control: in the baseline fits "
        f"(no trick), odd over even steps = {control_text}, the ratio the alternating method "
        "reports for a trick that costs nothing. "
        + " ".join(
            f"{c['trick']}: ratio {c['ratio (interleaved fits)']} {c['ratio 95% CI']} "
            f"(interleaved fits), {c['ratio (alternating steps)']} {c['alternating 95% CI']} "
            f"(alternating steps); hooks {c['trick hooks ms/step']} ms/step; target "
            f"{c['target ratio']}, met: {c['target met (fits / alternating)']}."
            for c in cells
        )
    )
    path = write_results(
        "overhead", settings=settings, columns=COLUMNS, rows=rows, notes=notes, quick=args.quick
    )
    for c in cells:
        console.print(
            f"[bold]{c['trick']}[/]: baseline {c['baseline ms/step']} ms/step, with trick "
            f"{c['with trick ms/step']} ms/step; ratio {c['ratio (interleaved fits)']} "
            f"(95% CI {c['ratio 95% CI']}) interleaved fits, {c['ratio (alternating steps)']} "
            f"({c['alternating 95% CI']}) alternating steps; trick hooks "
            f"{c['trick hooks ms/step']} ms/step; target {c['target ratio']} met: "
            f"{c['target met (fits / alternating)']}"
        )
    console.print(f"wrote {shown(path)}")


def _describe(setup: TrickSetup) -> str:
    parts = [
        f"{type(cb).__name__}({', '.join(f'{k}={v!r}' for k, v in _public(cb).items())})"
        for cb in setup.callbacks
    ]
    if setup.optimizer is not None:
        parts.append(f"optimizer {setup.optimizer!r}")
    return "; ".join(parts)


def _public(callback: Callback) -> dict[str, Any]:
    return {
        key: value
        for key, value in vars(callback).items()
        if not key.startswith("_") and isinstance(value, int | float | str | bool | None)
    }


if __name__ == "__main__":
    main()
