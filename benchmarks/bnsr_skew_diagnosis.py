"""Where BNSR's default exponent rule over- or under-corrects: per-channel signed skewness.

The default rule (``lam = 1 - alpha tanh(s)``, our reconstruction) sets the exponent from the
batch skewness alone; on MNIST-1D (an earlier version of ``bnsr_claim.py``) it left the normalised
features *more* skewed than BatchNorm, mostly by flipping left-skewed channels into right-skewed
ones. This script looks at the same question on the model and data of ``bnsr_claim.py``: it trains
one timm ``resnet10t`` with ``callbacks.BNSR()`` on Fashion-MNIST at 32x32 (the claim's default
training subset, epochs and optimizer; one seed, batch ``--batch-size``), passes the 10,000 test
images through it in eval mode and compares, per channel of every BNSR layer, the signed skewness
of the layer's input (that of BatchNorm's standardised values) with that of its output (from
float64 power sums, so no activation is stored). A channel "overshoots" when the warp flips the
sign of its skewness and leaves it larger in magnitude.

The learning rate is BNSR's chosen one in ``benchmarks/results/bnsr_claim.json`` when that file
exists (else ``--lr``), scaled to ``--batch-size`` as in the claim.

Writes ``benchmarks/results/bnsr_skew_diagnosis.json``.

Usage::

    python benchmarks/bnsr_skew_diagnosis.py           # ~1 min on one idle core
    python benchmarks/bnsr_skew_diagnosis.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import bnsr_claim
import torch
from _common import RESULTS_DIR, console, quiet_lightning, shown, write_results
from _protocol import device_settings
from torch import Tensor, nn

from lightning_dnn_tricks.nn.bnsr import BNSR_CLASSES

NAME = "bnsr_skew_diagnosis"
COLUMNS = [
    "layer",
    "channels",
    "median |skewness| in",
    "median |skewness| out",
    "channels more skewed after the warp",
    "of those, left-skewed before",
    "of those, sign flipped (overshoot)",
    "mean exponent, left-skewed channels",
    "mean exponent, right-skewed channels",
]


def layer_row(name: str, layer: nn.Module, skew_in: Tensor, skew_out: Tensor) -> list[Any]:
    alive = ~(skew_in.isnan() | skew_out.isnan())
    skew_in, skew_out = skew_in[alive], skew_out[alive]
    lam = getattr(layer, "running_lam").cpu()[alive]  # noqa: B009 (a registered buffer)
    worse = skew_out.abs() > skew_in.abs()
    left = skew_in < 0
    flipped = worse & (skew_in * skew_out < 0)

    def mean_of(mask: Tensor) -> float | str:
        return round(float(lam[mask].mean()), 3) if bool(mask.any()) else "-"

    return [
        name,
        len(skew_in),
        round(float(skew_in.abs().median()), 3),
        round(float(skew_out.abs().median()), 3),
        int(worse.sum()),
        int((worse & left).sum()),
        int(flipped.sum()),
        mean_of(left),
        mean_of(~left),
    ]


def chosen_lr(default: float) -> tuple[float, str]:
    """BNSR's learning rate (at batch 64) chosen by the claim's last run, else ``default``."""
    path = RESULTS_DIR / f"{bnsr_claim.NAME}.json"
    if path.exists():
        rates = json.loads(path.read_text()).get("settings", {}).get("learning_rates", {})
        if bnsr_claim.LABELS["bnsr"] in rates:
            return float(rates[bnsr_claim.LABELS["bnsr"]]), f"chosen in {shown(path)}"
    return default, "--lr (no claim result to read)"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=bnsr_claim.REFERENCE_BATCH)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW lr at batch 64, fallback")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 training steps")
    args = parser.parse_args(argv)
    forwarded = ["--accelerator", args.accelerator]
    if args.data_dir is not None:
        forwarded += ["--data-dir", args.data_dir]
    claim_args = bnsr_claim.parse_args([*forwarded, "--quick"] if args.quick else forwarded)
    quiet_lightning()
    torch.set_num_threads(args.threads)
    lr, lr_source = chosen_lr(args.lr)
    config = bnsr_claim.RunConfig("bnsr", args.batch_size, args.seed, lr)
    console.print(
        f"[bold]{NAME}[/]: timm {claim_args.model} with BNSR on Fashion-MNIST, batch "
        f"{args.batch_size}, {claim_args.n_train:,} images x {claim_args.epochs} epoch(s)"
    )
    model, data = bnsr_claim.train_model(config, claim_args)
    test_acc, moments = bnsr_claim.test_moments(model, data, claim_args)
    skew_in, skew_out = moments.signed("in"), moments.signed("out")
    layers = dict(model.named_modules())
    rows = [
        layer_row(name, layers[name], skew_in[name], skew_out[name])
        for name in skew_in
        if isinstance(layers[name], BNSR_CLASSES)
    ]
    total = sum(row[1] for row in rows)
    worse, left, flipped = (sum(row[k] for row in rows) for k in (4, 5, 6))
    notes = (
        f"Our reconstruction of BNSR, default rule lam = 1 - {claim_args.alpha} tanh(s); eval "
        f"mode on the test split after training (seed {args.seed}, batch {args.batch_size}, "
        f"test accuracy {test_acc:.4f}). {worse} of {total} channels are more skewed after the "
        f"warp than before; {left} of those were left-skewed and {flipped} had their skewness's "
        "sign flipped (the warp overshoots)."
    )
    limit = claim_args.limit_eval_batches
    test_images = "the 10,000" if limit is None else f"{claim_args.eval_batch_size * limit:,}"
    settings = {
        "model": f"timm {claim_args.model} (pretrained=False) with callbacks.BNSR("
        f"alpha={claim_args.alpha})",
        "data": f"Fashion-MNIST 32x32, {claim_args.n_train:,} training images x "
        f"{claim_args.epochs} epoch(s); {test_images} test images for the skewness",
        "batch_size": args.batch_size,
        "optimizer": f"AdamW(lr={lr} * sqrt({args.batch_size}/{bnsr_claim.REFERENCE_BATCH}), "
        f"weight_decay={claim_args.weight_decay}), cosine per step; lr {lr_source}",
        "seed": args.seed,
        "quick": args.quick,
        **device_settings(claim_args),
    }
    path = write_results(
        NAME, settings=settings, columns=COLUMNS, rows=rows, notes=notes, quick=args.quick
    )
    console.print(notes)
    console.print(f"wrote {shown(path)}")


if __name__ == "__main__":
    main()
