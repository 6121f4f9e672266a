"""The claim benchmarks' statistical protocol (``benchmarks/_protocol.py``), by hand."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _protocol import (
    add_protocol_arguments,
    check_protocol_arguments,
    compare,
    device_settings,
    verdict_record,
)

BASE = {0: 0.88, 1: 0.90, 2: 0.90}


def test_paired_interval_by_hand() -> None:
    # differences 0.02, 0.02, 0.01: mean 1/60, sd 0.005774, t(0.975, 2 dof) = 4.3027
    result = compare("trick", {0: 0.90, 1: 0.92, 2: 0.91}, "baseline", BASE)
    half = 4.302653 * (0.01 / math.sqrt(3)) / math.sqrt(3)
    assert result.difference == pytest.approx(1 / 60)
    assert (result.low, result.high) == pytest.approx((1 / 60 - half, 1 / 60 + half), rel=1e-5)
    assert result.verdict == "supported"
    assert result.arm_mean == pytest.approx(0.91) and result.baseline_std > 0


def test_verdicts() -> None:
    worse = {0: 0.85, 1: 0.86, 2: 0.86}
    mixed = {0: 0.90, 1: 0.89, 2: 0.90}
    assert compare("a", worse, "b", BASE).verdict == "not supported"
    assert compare("a", mixed, "b", BASE).verdict == "inconclusive"
    # within 0.06 of the baseline: competitive (the interval is [-0.051, -0.022])
    assert compare("a", worse, "b", BASE, claim="not_worse", margin=0.06).verdict == "supported"
    # lower is better (a loss): the worse accuracies read as lower losses
    assert compare("a", worse, "b", BASE, higher_is_better=False).verdict == "supported"


def test_only_seeds_run_by_both_arms_count_and_three_are_needed() -> None:
    with pytest.raises(ValueError, match="at least 3 seeds"):
        compare("a", {0: 1.0, 1: 1.0, 7: 1.0}, "b", BASE)
    with pytest.raises(ValueError, match="finite"):
        compare("a", {0: 1.0, 1: math.nan, 2: 1.0}, "b", BASE)
    with pytest.raises(ValueError, match="claim"):
        compare("a", BASE, "b", BASE, claim="maybe")  # type: ignore[arg-type]


def test_verdict_record_keeps_the_claim_in_words() -> None:
    comparison = compare("trick", {0: 0.90, 1: 0.92, 2: 0.91}, "baseline", BASE, claim="not_worse")
    record = verdict_record("the trick is not worse", comparison, metric="test accuracy")
    assert record["claim"] == "the trick is not worse" and record["claim_kind"] == "not_worse"
    assert record["verdict"] == comparison.verdict and record["seeds"] == [0, 1, 2]


def test_fewer_than_three_seeds_are_refused_outside_quick(tmp_path: Path) -> None:
    args = SimpleNamespace(seeds=[0, 1], quick=False, data_dir=str(tmp_path))
    with pytest.raises(SystemExit, match="at least 3 seeds"):
        check_protocol_arguments(args)


def test_missing_data_stops_with_both_ways_to_get_it(tmp_path: Path) -> None:
    args = SimpleNamespace(seeds=[0, 1, 2], quick=False, data_dir=str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        check_protocol_arguments(args)
    message = str(stop.value)
    assert "apt-get install" in message and "dataset-fashion-mnist" in message
    assert "torchvision" in message and "make fashion-mnist" in message


def test_protocol_arguments_and_device_record() -> None:
    parser = argparse.ArgumentParser()
    add_protocol_arguments(parser)
    args = parser.parse_args(["--seeds", "3", "4", "5", "--accelerator", "cpu"])
    assert args.seeds == [3, 4, 5] and not args.full and args.devices == 1
    assert device_settings(args) == {"accelerator": "cpu", "devices": 1, "device": "CPU"}
