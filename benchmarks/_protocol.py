"""The statistical protocol of the claim benchmarks, written once.

Every claim compares an arm (the trick) with a baseline over the same seeds: the runs are paired by
seed (same initial weights and data order), so the quantity is the per-seed difference. A claim is
one of:

- ``"better"``: the arm's metric exceeds the baseline's (higher is better, or lower with
  ``higher_is_better=False``);
- ``"not_worse"``: the arm is within ``margin`` of the baseline (a non-inferiority claim, e.g.
  "competitive with tuned weight decay").

The verdict comes from the 95% Student-t interval of the mean paired difference (arm − baseline,
sign-flipped when lower is better): **supported** when the whole interval lies on the claim's side
(above 0, or above ``-margin``), **not supported** when it lies wholly on the other side (below 0,
or below ``-margin``), **inconclusive** otherwise. At least 3 seeds are required.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from scipy import stats

Claim = Literal["better", "not_worse"]
Verdict = Literal["supported", "not supported", "inconclusive"]
MIN_SEEDS = 3


@dataclass(frozen=True)
class Comparison:
    """One arm against the baseline, paired by seed."""

    arm: str
    baseline: str
    claim: Claim
    seeds: list[int]
    arm_mean: float
    arm_std: float
    baseline_mean: float
    baseline_std: float
    difference: float  # mean of (arm - baseline), in the metric's own direction
    low: float
    high: float
    margin: float
    verdict: Verdict

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.arm} vs {self.baseline} ({self.claim}, {len(self.seeds)} seeds): "
            f"{self.arm_mean:.4f} ± {self.arm_std:.4f} vs {self.baseline_mean:.4f} ± "
            f"{self.baseline_std:.4f}; paired difference {self.difference:+.4f} "
            f"[{self.low:+.4f}, {self.high:+.4f}]: {self.verdict}"
        )


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def compare(
    arm: str,
    arm_values: Mapping[int, float],
    baseline: str,
    baseline_values: Mapping[int, float],
    claim: Claim = "better",
    higher_is_better: bool = True,
    margin: float = 0.0,
    confidence: float = 0.95,
) -> Comparison:
    """The paired comparison of ``arm`` with ``baseline`` (values keyed by seed) and its verdict.

    Raises:
        ValueError: fewer than 3 seeds in common, a non-finite value, a negative ``margin``, a
            ``confidence`` outside (0, 1), or an unknown ``claim``.
    """
    if claim not in ("better", "not_worse"):
        raise ValueError(f"`claim` must be 'better' or 'not_worse', got {claim!r}.")
    if not (margin >= 0 and math.isfinite(margin)):
        raise ValueError(f"`margin` must be a finite number >= 0, got {margin!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"`confidence` must be in (0, 1), got {confidence!r}.")
    seeds = sorted(set(arm_values) & set(baseline_values))
    if len(seeds) < MIN_SEEDS:
        raise ValueError(
            f"a claim needs at least {MIN_SEEDS} seeds run by both arms, got {len(seeds)}."
        )
    values = [float(arm_values[s]) for s in seeds] + [float(baseline_values[s]) for s in seeds]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the values of {arm} and {baseline} must be finite, got {values}.")
    sign = 1.0 if higher_is_better else -1.0
    differences = [sign * (arm_values[s] - baseline_values[s]) for s in seeds]
    mean, std = _mean_std(differences)
    half = stats.t.ppf(0.5 + confidence / 2, len(seeds) - 1) * std / math.sqrt(len(seeds))
    low, high = mean - half, mean + half
    threshold = 0.0 if claim == "better" else -margin
    verdict: Verdict = (
        "supported" if low > threshold else "not supported" if high < threshold else "inconclusive"
    )
    arm_mean, arm_std = _mean_std([float(arm_values[s]) for s in seeds])
    base_mean, base_std = _mean_std([float(baseline_values[s]) for s in seeds])
    return Comparison(
        arm, baseline, claim, seeds, arm_mean, arm_std, base_mean, base_std,
        mean, low, high, margin, verdict,
    )  # fmt: skip


# --------------------------------------------------------------------------- the shared run setup
def verdict_record(claim: str, comparison: Comparison, *, metric: str) -> dict[str, Any]:
    """One claim's verdict for the results JSON (``verdicts``): the claim in words, the metric and
    the comparison, whose kind (``better``/``not_worse``) is stored as ``claim_kind``."""
    record = comparison.as_dict()
    record["claim_kind"] = record.pop("claim")  # "better" / "not_worse"
    return {"claim": claim, "metric": metric, **record}


def add_protocol_arguments(parser: Any, *, seeds: Sequence[int] = (0, 1, 2)) -> None:
    """The options every Fashion-MNIST claim script shares.

    ``--seeds`` (at least 3 outside ``--quick``), ``--full`` (the GPU-scale run: the whole
    training set and the script's longer budget), ``--accelerator``/``--devices`` (recorded in
    the JSON) and ``--data-dir`` (else ``$LDT_FASHION_MNIST_DIR`` or Debian's folder).
    """
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument(
        "--full", action="store_true", help="GPU scale: all 55,000 training images, longer budget"
    )
    parser.add_argument("--accelerator", default="cpu", help="Lightning accelerator (cpu, gpu)")
    parser.add_argument("--devices", type=int, default=1, help="devices per run")
    parser.add_argument("--data-dir", default=None, help="folder of the Fashion-MNIST IDX files")


def check_protocol_arguments(args: Any) -> None:
    """Refuse fewer than 3 seeds outside ``--quick``; stop with how to get the data if missing."""
    if not getattr(args, "quick", False) and len(set(args.seeds)) < MIN_SEEDS:
        raise SystemExit(f"a claim needs at least {MIN_SEEDS} seeds (--seeds), got {args.seeds}.")
    require_fashion_mnist(args.data_dir)


def require_fashion_mnist(data_dir: str | None = None) -> None:
    """Stop the script with the data module's own message when the IDX files are missing."""
    from lightning_dnn_tricks.data.fashion_mnist import find_files

    try:
        find_files(data_dir)
    except FileNotFoundError as error:
        raise SystemExit(f"{error}\n(`make fashion-mnist` checks again.)") from None


def device_settings(args: Any) -> dict[str, Any]:
    """The accelerator, device count and device name, for the results JSON."""
    import torch

    name = "CPU"
    if args.accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
    return {"accelerator": args.accelerator, "devices": args.devices, "device": name}
