"""The edge report of issue 13: the resume matrix and the public-API fuzz, on any checkout.

- **Resume matrix**: every registered trick trains 3 epochs of 4 batches
  (``tests/conformance/test_resume_matrix.py``'s runs) and resumes from a mid-epoch checkpoint,
  one written on an epoch's last batch and one written at an epoch's end, with ``max_epochs`` and
  with ``max_steps``; each cell says whether the resumed run ends with exactly the weights of the
  uninterrupted one.
- **Fuzz counts**: the cases of ``tests/test_public_api_fuzz.py`` run one by one (5 s limit each),
  counted as clear errors, errors that do not name the argument, silent acceptances and hangs.

Give another checkout (e.g. a ``git worktree`` of an older commit, with this commit's two test
files copied in) to measure it with the same tests:

    python benchmarks/edge_report.py               # this checkout (~1 min on 2 CPU cores)
    PYTHONPATH=/tmp/old python benchmarks/edge_report.py /tmp/old
"""

from __future__ import annotations

import collections
import logging
import signal
import sys
import tempfile
import warnings
from pathlib import Path

import torch

ROOT = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1])
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "tests" / "conformance")]


def resume_matrix() -> None:
    import test_resume_matrix as runs

    from lightning_dnn_tricks import list_tricks

    limits = {"max_epochs": -1, "max_steps": runs.EPOCHS * runs.BATCHES}
    columns = [(point, limit) for limit in limits for point in runs.RESUME_POINTS]
    print("| trick | " + " | ".join(f"{p}, {limit}" for p, limit in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    exact = 0
    for trick in sorted(spec.name for spec in list_tricks()):
        cells = {}
        for limit, max_steps in limits.items():
            folder = Path(tempfile.mkdtemp())
            whole = runs._fit(trick, max_steps, folder)
            final = {k: v.clone() for k, v in whole.lightning_module.state_dict().items()}
            for point, (kind, step) in runs.RESUME_POINTS.items():
                checkpoint = next((folder / kind).glob(f"*{step}.ckpt"))
                try:
                    resumed = runs._fit(trick, max_steps, folder, ckpt_path=str(checkpoint))
                except Exception as error:  # an old checkout may raise
                    cells[point, limit] = f"error: {type(error).__name__}"
                    continue
                same = resumed.global_step == whole.global_step and all(
                    torch.equal(v, final[k])
                    for k, v in resumed.lightning_module.state_dict().items()
                )
                cells[point, limit] = "exact" if same else f"differs ({resumed.global_step} steps)"
                exact += same
        print(f"| {trick} | " + " | ".join(cells[c] for c in columns) + " |")
    print(f"bit-exact: {exact} of {len(columns) * len(list_tricks())}")


class _Timeout(BaseException):
    pass


def _alarm(*_: object) -> None:
    raise _Timeout


def fuzz_counts() -> None:
    import test_public_api_fuzz as fuzz

    signal.signal(signal.SIGALRM, _alarm)
    counts: collections.Counter[str] = collections.Counter()
    for case in fuzz.CASES:
        signal.alarm(5)
        try:
            outcome = fuzz.run_case(case).split(":")[0]
        except _Timeout:
            outcome = "runs for ever (> 5 s)"
        except Exception:  # the valid call itself fails on an old checkout
            outcome = "valid call broken"
        signal.alarm(0)
        counts[outcome] += 1
    print(f"fuzz cases: {len(fuzz.CASES)}: {dict(counts)}")


if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    logging.disable(logging.CRITICAL)
    resume_matrix()
    fuzz_counts()
