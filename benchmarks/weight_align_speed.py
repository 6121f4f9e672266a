"""WeightAlign's step time against the plain model and against timm's ``StdConv2d`` (CPU).

Part (a) of ``weight_align_claim.py``; also runnable alone. A timm backbone (``resnet18``, 32x32
RGB, batch 64) in three variants built from the same initial weights: plain, every conv swapped
for timm ``StdConv2d`` (weights shared, with :func:`lightning_dnn_tricks.nn.replace_modules`), and
WeightAlign (:func:`lightning_dnn_tricks.functional.apply_weight_align`). Plain PyTorch training
steps (forward, cross-entropy, backward, SGD step) on one fixed random batch, the three variants
interleaved step by step (rotating which goes first) in one process, in rounds; each round first
waits for a quiet machine and records the CPU share other processes used. Each step is timed in
CPU time of this process (``time.process_time``: robust to other processes taking the cores of a
shared machine, one torch thread by default) and in wall time. Reports ratios of pooled median
step times with 95% bootstrap intervals over rounds. Targets: WeightAlign at most 15% over plain,
and at most as slow as ``StdConv2d``. Writes ``benchmarks/results/weight_align_speed.json``.

Usage::

    python benchmarks/weight_align_speed.py           # ~3 min
    python benchmarks/weight_align_speed.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from _common import (
    OtherLoad,
    bootstrap_interval,
    console,
    shown,
    wait_until_quiet,
    write_results,
)
from timm.layers import ScaledStdConv2d, StdConv2d
from torch import nn

from lightning_dnn_tricks.functional import apply_weight_align
from lightning_dnn_tricks.nn import LayerSelection, replace_modules, share_state

NAME = "weight_align_speed"
VARIANTS = ("plain", "std_conv", "scaled_std_conv", "weight_align")
LABELS = {
    "plain": "plain",
    "std_conv": "timm StdConv2d",
    "scaled_std_conv": "timm ScaledStdConv2d (gamma sqrt 2)",
    "weight_align": "WeightAlign",
}
#: (reference variant, largest acceptable WeightAlign ratio to it)
TARGETS = (("plain", 1.15), ("std_conv", 1.0), ("scaled_std_conv", 1.0))
COLUMNS = [
    "variant",
    "CPU ms/step",
    "ratio to plain",
    "95% CI (plain)",
    "WA target <= 1.15 met",
    "ratio to StdConv2d",
    "95% CI (StdConv2d)",
    "WA target <= 1.0 met",
    "ratio to ScaledStdConv2d",
    "95% CI (ScaledStdConv2d)",
    "WA target <= 1.0 met (ScaledStdConv2d)",
    "wall ms/step",
    "wall ratio to plain",
    "wall ratio to StdConv2d",
    "wall ratio to ScaledStdConv2d",
]
Timings = dict[str, list[float]]
Rounds = Sequence[Timings]


def std_conv_like(conv: nn.Module, layer: type[nn.Module] = StdConv2d, **kw: Any) -> nn.Module:
    """timm's ``StdConv2d`` (or ``layer``) with the geometry of ``conv``, sharing its weight and
    bias."""
    assert isinstance(conv, nn.Conv2d)
    std_conv = layer(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        groups=conv.groups,
        bias=conv.bias is not None,
        **kw,
    )
    return share_state(conv, std_conv)


def build(variant: str, model_name: str, seed: int = 0) -> nn.Module:
    """The ``variant`` of a freshly initialised timm ``model_name`` (same weights for a seed)."""
    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False, num_classes=10)
    convs = LayerSelection(types=(nn.Conv2d,), exclude_classifier=True)
    if variant == "std_conv":
        replace_modules(model, convs, std_conv_like, tag="std_conv")
    elif variant == "scaled_std_conv":  # the same weight as WeightAlign's at gain sqrt(2)
        scaled = partial(std_conv_like, layer=ScaledStdConv2d, gamma=math.sqrt(2.0))
        replace_modules(model, convs, scaled, tag="scaled_std_conv")
    elif variant == "weight_align":
        apply_weight_align(model)
    return model.train()


def measure(args: argparse.Namespace) -> tuple[list[Timings], list[Timings], list[float]]:
    """Per-step CPU and wall seconds of every variant per round, and the other processes' load."""
    torch.set_num_threads(args.speed_threads)
    models = {v: build(v, args.speed_model) for v in VARIANTS}
    optimizers = {
        v: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9) for v, m in models.items()
    }
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.speed_batch_size, 3, 32, 32, generator=generator)
    y = torch.randint(0, 10, (args.speed_batch_size,), generator=generator)

    def step(variant: str) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        loss = nn.functional.cross_entropy(models[variant](x), y)
        optimizers[variant].zero_grad(set_to_none=True)
        loss.backward()
        optimizers[variant].step()
        return time.process_time() - cpu, time.perf_counter() - wall

    for _ in range(args.speed_warmup):
        for variant in VARIANTS:
            step(variant)
    cpu_rounds: list[Timings] = []
    wall_rounds: list[Timings] = []
    loads: list[float] = []
    for index in range(args.speed_rounds):
        wait_until_quiet(args.busy_threshold, args.quiet_wait)
        cpu: Timings = {v: [] for v in VARIANTS}
        wall: Timings = {v: [] for v in VARIANTS}
        with OtherLoad() as load:
            for i in range(args.speed_steps):
                shift = i % len(VARIANTS)
                for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                    cpu_seconds, wall_seconds = step(variant)
                    cpu[variant].append(cpu_seconds)
                    wall[variant].append(wall_seconds)
        cpu_rounds.append(cpu)
        wall_rounds.append(wall)
        loads.append(0.0 if load.share is None else load.share)
        medians = ", ".join(f"{v} {1e3 * statistics.median(t):.1f}" for v, t in cpu.items())
        console.print(f"speed round {index + 1}: CPU {medians} ms (other load {loads[-1]:.0%})")
    return cpu_rounds, wall_rounds, loads


def pooled_median(rounds: Rounds, variant: str) -> float:
    return statistics.median(t for r in rounds for t in r[variant])


def ratio_of_medians(rounds: Rounds, top: str, bottom: str) -> float:
    return pooled_median(rounds, top) / pooled_median(rounds, bottom)


def rows(cpu: Rounds, wall: Rounds) -> list[list[Any]]:
    """One row per variant: median CPU ms/step, its ratios with intervals, then wall time."""
    table = []
    for variant in VARIANTS:
        cells: list[Any] = [LABELS[variant], round(1e3 * pooled_median(cpu, variant), 2)]
        for reference, target in TARGETS:
            ratio = ratio_of_medians(cpu, variant, reference)
            low, high = bootstrap_interval(
                cpu, partial(ratio_of_medians, top=variant, bottom=reference)
            )
            met = ("yes" if ratio <= target else "no") if variant == "weight_align" else "–"
            cells += [round(ratio, 4), f"[{low:.4f}, {high:.4f}]", met]
        cells.append(round(1e3 * pooled_median(wall, variant), 2))
        cells += [round(ratio_of_medians(wall, variant, ref), 4) for ref, _ in TARGETS]
        table.append(cells)
    return table


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--speed-model", default="resnet18", help="timm architecture of (a)")
    parser.add_argument("--speed-batch-size", type=int, default=64)
    parser.add_argument("--speed-rounds", type=int, default=8)
    parser.add_argument("--speed-steps", type=int, default=6, help="steps per variant per round")
    parser.add_argument("--speed-warmup", type=int, default=3)
    parser.add_argument("--speed-threads", type=int, default=1, help="torch threads of (a)")
    parser.add_argument("--busy-threshold", type=float, default=0.05)
    parser.add_argument("--quiet-wait", type=float, default=20.0, help="most seconds to wait")


def quick_settings(args: argparse.Namespace) -> None:
    args.speed_rounds, args.speed_steps, args.speed_warmup = 2, 3, 1
    args.quiet_wait = min(args.quiet_wait, 3.0)


def run(args: argparse.Namespace) -> tuple[list[list[Any]], Path]:
    """Measure, write ``weight_align_speed.json``; return the table rows and the file path."""
    cpu, wall, loads = measure(args)
    table = rows(cpu, wall)
    settings = {
        "model": f"timm {args.speed_model} (pretrained=False), 10 classes",
        "input": f"one fixed random batch {args.speed_batch_size}x3x32x32, CPU",
        "torch_threads": args.speed_threads,
        "rounds": args.speed_rounds,
        "steps_per_variant_per_round": args.speed_steps,
        "warmup_steps": args.speed_warmup,
        "other_processes_cpu_share_per_round": [round(s, 3) for s in loads],
        "quick": args.quick,
    }
    notes = (
        "Plain PyTorch training steps (forward, cross-entropy, backward, SGD step) of four "
        "variants built from the same initial weights, interleaved step by step in one process. "
        "Ratios of pooled median CPU time per step (process CPU time, so other processes taking "
        "the cores do not count); 95% percentile bootstrap over rounds; wall-clock ratios for "
        "comparison. WeightAlign "
        "runs its fused forward/backward (nn.weight_align.align_weight); StdConv2d and "
        "ScaledStdConv2d run F.batch_norm over the weight. ScaledStdConv2d with gamma sqrt(2) "
        "(its gain initialised to 1) computes the same weight as WeightAlign at its default gain "
        "sqrt(2), up to eps (tested). Rounds are kept whatever the other load (listed in the "
        "settings): interleaving step by step exposes all variants to it alike."
    )
    path = write_results(
        NAME, settings=settings, columns=COLUMNS, rows=table, notes=notes, quick=args.quick
    )
    for row in table:
        console.print(
            f"{row[0]}: CPU {row[1]} ms/step, x{row[2]} {row[3]} of plain, x{row[5]} {row[6]} of "
            f"StdConv2d, x{row[8]} {row[9]} of ScaledStdConv2d; wall {row[11]} ms/step"
        )
    return table, path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args(argv)
    if args.quick:
        quick_settings(args)
    _, path = run(args)
    console.print(f"wrote {shown(path)}")


if __name__ == "__main__":
    main()
