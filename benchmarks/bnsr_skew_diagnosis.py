"""Where BNSR's default exponent rule raises skewness: per-channel signed skewness on MNIST-1D.

``bnsr_claim.py`` found that on MNIST-1D the default rule (``lam = 1 - alpha tanh(s)``, our
reconstruction) leaves the normalised features *more* skewed than BatchNorm. This script trains
the claim's MNIST-1D model with ``callbacks.BNSR()`` (same settings, one seed), passes the test
split through it in eval mode and compares, per channel of every BNSR layer, the signed skewness
of the layer's input (that of BatchNorm's standardised values) with that of its output. A channel
"overshoots" when the warp flips the sign of its skewness and leaves it larger in magnitude.

Writes ``benchmarks/results/bnsr_skew_diagnosis.json``.

Usage::

    python benchmarks/bnsr_skew_diagnosis.py           # ~3 min on one idle core
    python benchmarks/bnsr_skew_diagnosis.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import bnsr_claim
import lightning.pytorch as pl
import torch
from _common import console, quiet_lightning, shown, trainer_kwargs, write_results
from torch import Tensor, nn

from lightning_dnn_tricks.callbacks import BNSR
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


def signed_skewness(batches: list[Tensor]) -> Tensor:
    """Per-channel skewness (float64) of the concatenated ``(N, C, ...)`` batches."""
    values = torch.cat(batches).double().transpose(0, 1)
    flat = values.reshape(values.shape[0], -1)
    centred = flat - flat.mean(1, keepdim=True)
    return centred.pow(3).mean(1) / centred.pow(2).mean(1).clamp_min(1e-30).pow(1.5)


def record_layers(model: nn.Module) -> tuple[dict[str, list[Tensor]], dict[str, list[Tensor]], Any]:
    """Forward hooks collecting every BNSR layer's inputs and outputs."""
    inputs: dict[str, list[Tensor]] = {}
    outputs: dict[str, list[Tensor]] = {}

    def hook(name: str) -> Any:
        def record(module: nn.Module, args: Any, output: Tensor) -> None:
            inputs.setdefault(name, []).append(args[0].detach())
            outputs.setdefault(name, []).append(output.detach())

        return record

    handles = [
        module.register_forward_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, BNSR_CLASSES)
    ]
    return inputs, outputs, handles


def layer_row(name: str, layer: nn.Module, skew_in: Tensor, skew_out: Tensor) -> list[Any]:
    worse = skew_out.abs() > skew_in.abs()
    left = skew_in < 0
    flipped = worse & (skew_in * skew_out < 0)
    lam = getattr(layer, "running_lam")  # noqa: B009 (a registered buffer)

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


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 epochs")
    args = parser.parse_args(argv)
    claim_args = bnsr_claim.parse_args(["--quick"] if args.quick else [])
    quiet_lightning()
    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, verbose=False)
    config = bnsr_claim.RunConfig("mnist1d", "bnsr", args.seed)
    model, data, epochs = bnsr_claim.build(config, claim_args)
    trainer = pl.Trainer(
        max_epochs=epochs, callbacks=[BNSR(alpha=claim_args.alpha)], **trainer_kwargs()
    )
    console.print(f"[bold]{NAME}[/]: training the MNIST-1D model with BNSR for {epochs} epochs")
    trainer.fit(model, datamodule=data)
    inputs, outputs, handles = record_layers(model)
    model.eval()
    with torch.no_grad():
        for x, _ in data.test_dataloader():
            model(x)
    for handle in handles:
        handle.remove()
    layers = dict(model.named_modules())
    rows = [
        layer_row(name, layers[name], signed_skewness(inputs[name]), signed_skewness(outputs[name]))
        for name in inputs
    ]
    total = sum(row[1] for row in rows)
    worse, left, flipped = (sum(row[k] for row in rows) for k in (4, 5, 6))
    notes = (
        f"Our reconstruction of BNSR, default rule lam = 1 - {claim_args.alpha} tanh(s); eval "
        f"mode on the test split after training (seed {args.seed}). {worse} of {total} channels "
        f"are more skewed after the warp than before; {left} of those were left-skewed and "
        f"{flipped} had their skewness's sign flipped (the warp overshoots)."
    )
    settings = {
        "model": "bnsr_claim.Conv1dNet (four Conv1d + BatchNorm1d + ReLU blocks)",
        "data": f"MNIST-1D, {claim_args.mnist1d_samples} samples",
        "epochs": epochs,
        "seed": args.seed,
        "bnsr": f"callbacks.BNSR(alpha={claim_args.alpha})",
        "quick": args.quick,
    }
    path = write_results(
        NAME, settings=settings, columns=COLUMNS, rows=rows, notes=notes, quick=args.quick
    )
    console.print(notes)
    console.print(f"wrote {shown(path)}")


if __name__ == "__main__":
    main()
