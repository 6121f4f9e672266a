"""Shared helpers of the benchmark scripts: result files, machine description, timing, statistics.

Every benchmark writes ``benchmarks/results/NAME.json`` with the keys ``benchmark``, ``command``,
``created``, ``machine``, ``settings``, ``columns``, ``rows`` and ``notes`` (the docs render them),
and, for paper claims, a plot at ``docs/assets/results/NAME.png``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import platform
import random
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, TypeVar

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from lightning_dnn_tricks.callbacks import StepTimer

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
ASSETS_DIR = REPO_ROOT / "docs" / "assets" / "results"
#: Smoke runs (``--quick``) write their JSON and PNG here, never over the published results.
QUICK_DIR = RESULTS_DIR / "quick"

console = Console()

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")

#: The callback hooks that run inside a training step (between batch start and batch end).
PER_STEP_HOOKS = (
    "on_train_batch_start",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
    "on_before_zero_grad",
    "on_train_batch_end",
)


# --------------------------------------------------------------------------- result files
def machine_description() -> str:
    """The platform, CPU count, torch version and thread count, as one line."""
    processor = platform.processor() or platform.machine()
    threads = torch.get_num_threads()
    return (
        f"{platform.platform()} ({processor}), {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, torch {torch.__version__} "
        f"({threads} thread{'' if threads == 1 else 's'}), lightning {pl.__version__}"
    )


#: Flags that change how a run is carried out but not its results (left out of ``command``).
RESULT_NEUTRAL_FLAGS = ("--resume",)


def command_line() -> str:
    """The command that reproduces this run: ``python benchmarks/SCRIPT.py ARGS``.

    Flags in :data:`RESULT_NEUTRAL_FLAGS` (``--resume``) are left out.
    """
    script = Path(sys.argv[0]).resolve()
    try:
        shown = str(script.relative_to(REPO_ROOT))
    except ValueError:
        shown = str(script)
    arguments = [arg for arg in sys.argv[1:] if arg not in RESULT_NEUTRAL_FLAGS]
    return shlex.join(["python", shown, *arguments])


def write_results(
    name: str,
    *,
    settings: dict[str, Any],
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    notes: str,
    quick: bool = False,
    verdicts: Sequence[dict[str, Any]] = (),
) -> Path:
    """Write ``benchmarks/results/NAME.json`` in the format the docs render; return its path.

    ``verdicts`` are the claims' verdicts (``_protocol.verdict_record``), shown first on the
    method card. A ``quick`` (smoke) run writes to ``benchmarks/results/quick/`` instead.
    """
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"Row {row!r} has {len(row)} cells for {len(columns)} columns.")
    payload = {
        "benchmark": name,
        "command": command_line(),
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "settings": settings,
        "columns": list(columns),
        "rows": [list(row) for row in rows],
        "notes": notes,
        "verdicts": list(verdicts),
    }
    path = results_dir(quick) / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def plot_path(name: str, quick: bool = False) -> Path:
    """``docs/assets/results/NAME.png``, or ``benchmarks/results/quick/NAME.png`` when ``quick``."""
    if quick:
        return results_dir(quick) / f"{name}.png"
    ASSETS_DIR.mkdir(parents=True, exist_ok=True)
    return ASSETS_DIR / f"{name}.png"


def results_dir(quick: bool = False) -> Path:
    """``benchmarks/results``, or its git-ignored ``quick/`` sub-folder for smoke runs."""
    if not quick:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        return RESULTS_DIR
    QUICK_DIR.mkdir(parents=True, exist_ok=True)
    ignore = QUICK_DIR / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# Smoke-run output (--quick): never published.\n*\n")
    return QUICK_DIR


def shown(path: Path) -> str:
    """``path`` relative to the repository root when possible (for messages)."""
    try:
        return str(path.relative_to(REPO_ROOT))
    except ValueError:
        return str(path)


def overhead_summary(trick: str) -> str:
    """One sentence with ``trick``'s measured step-time ratios from ``overhead.json``.

    For the notes of the claim benchmarks; says what to run when the file or the row is missing.
    """
    path = RESULTS_DIR / "overhead.json"
    if not path.exists():
        return "Overhead: run benchmarks/overhead.py."
    saved = json.loads(path.read_text())
    for row in saved["rows"]:
        cells = dict(zip(saved["columns"], row, strict=True))
        if cells.get("trick") != trick:
            continue
        parts = [
            f"{cells[column]} {cells.get(interval, '')}".strip() + f" ({column[7:-1]})"
            for column, interval in (
                ("ratio (interleaved fits)", "ratio 95% CI"),
                ("ratio (alternating steps)", "alternating 95% CI"),
            )
            if cells.get(column) not in (None, "n/a")
        ]
        return (
            f"Overhead ({shown(path)}, {saved['settings'].get('model', '')}, "
            f"{saved['settings'].get('torch_threads', '?')} thread(s)): step-time ratio "
            + ", ".join(parts)
            + "."
        )
    return f"Overhead: {trick} missing from {shown(path)}."


# --------------------------------------------------------------------------- Lightning runs
def quiet_lightning() -> None:
    """Silence Lightning's per-``fit`` banners and the warnings that do not apply to benchmarks."""
    for logger_name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(logger_name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
    warnings.filterwarnings("ignore", message=r".*number of training batches.*")
    warnings.filterwarnings("ignore", message=r".*`training_step` returned.*")
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r".*defined a `validation_step` but have no.*")


def init_worker(threads: int | None) -> None:
    """Set up a process that trains benchmark runs: quiet Lightning, torch thread count."""
    quiet_lightning()
    if threads is not None:
        torch.set_num_threads(threads)


def run_parallel(
    function: Callable[[Item], Outcome],
    items: Sequence[Item],
    on_result: Callable[[Outcome], None],
    *,
    workers: int,
    threads: int | None,
) -> None:
    """Call ``function`` on every item and pass each outcome to ``on_result`` as it completes.

    With ``workers > 1`` the calls run in that many spawned processes (each set up by
    :func:`init_worker`); ``function`` must then be picklable (a module-level function or a
    ``functools.partial`` of one). With one worker they run here, in order.
    """
    if workers <= 1:
        for item in items:
            on_result(function(item))
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=init_worker, initargs=(threads,)
    ) as pool:
        for future in as_completed([pool.submit(function, item) for item in items]):
            on_result(future.result())


def run_missing(
    function: Callable[[Item], Outcome],
    configs: Sequence[Item],
    results: dict[Item, Outcome],
    *,
    save: Callable[[dict[Item, Outcome]], None],
    describe: Callable[[Outcome], str],
    stage: str,
    workers: int,
    threads: int | None,
) -> None:
    """Run ``function`` on every config missing from ``results`` (outcomes keyed by their
    ``.config``); after each, store it, call ``save(results)`` and print ``describe(outcome)``
    with the stage's progress count."""
    todo = [config for config in configs if config not in results]
    done = 0

    def record(outcome: Outcome) -> None:
        nonlocal done
        done += 1
        results[outcome.config] = outcome  # type: ignore[attr-defined]
        save(results)
        console.print(f"{stage} [{done}/{len(todo)}] {describe(outcome)}")

    run_parallel(function, todo, record, workers=workers, threads=threads)


def trainer_kwargs(accelerator: str = "cpu", devices: int = 1) -> dict[str, Any]:
    """The Trainer settings every benchmark shares: no logger, checkpoints or progress bar."""
    return {
        "accelerator": accelerator,
        "devices": devices,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }


def progress() -> Progress:
    """A rich progress display with a bar, a count, elapsed and remaining time."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )


class TrickStepTimer(StepTimer):
    """The library's :class:`StepTimer`, plus the time spent inside a trick's per-step hooks.

    Callbacks passed through :meth:`instrument` have their per-step hooks timed: ``hook_seconds``
    holds, per step, the time spent inside them, a direct reading of their cost. With
    ``alternate=True`` those hooks run on odd optimizer steps only (``trick_on`` and ``odd_step``
    record which),
    so steps with and without the trick can be compared within one run, a few hundred
    milliseconds apart. Step times are in ``durations`` (all steps; warm-up included).

    Args:
        alternate: run the instrumented hooks on every other step only.
    """

    def __init__(self, alternate: bool = False) -> None:
        super().__init__(warmup_steps=0)
        self.alternate = alternate
        self.hook_seconds: list[float] = []
        self.trick_on: list[bool] = []
        self.odd_step: list[bool] = []
        self._hooks = 0.0
        self._on = True
        self._odd = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._hooks = 0.0
        self._odd = trainer.global_step % 2 == 1
        self._on = not self.alternate or self._odd
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.hook_seconds.append(self._hooks)
        self.trick_on.append(self._on)
        self.odd_step.append(self._odd)

    def instrument(self, callback: Callback) -> Callback:
        """Time (and, when alternating, gate) the per-step hooks that ``callback`` overrides.

        Put this timer before ``callback`` in the Trainer's callbacks.
        """
        for name in PER_STEP_HOOKS:
            if getattr(type(callback), name) is getattr(Callback, name):
                continue
            setattr(callback, name, self._timed(getattr(callback, name)))
        return callback

    def _timed(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self._on:
                return None
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self._hooks += time.perf_counter() - start

        return timed


# --------------------------------------------------------------------------- machine load
class OtherLoad:
    """Measure how busy the machine was with *other* processes while a block of code ran.

    Reads the aggregate CPU time of ``/proc/stat`` (Linux) and subtracts this process's own CPU
    time: ``share`` is the other processes' CPU time over the wall time times the CPU count (0: the
    machine was ours alone, 1: others used every core). ``None`` where ``/proc/stat`` is missing.
    Benchmarks use it to discard timings taken while other jobs competed for the cores.

    Example:
        >>> with OtherLoad() as load:
        ...     pass
        >>> load.share is None or load.share >= 0.0
        True
    """

    _STAT = Path("/proc/stat")

    def __init__(self) -> None:
        self.share: float | None = None
        self._start: tuple[float, float, float] | None = None

    @classmethod
    def _busy_seconds(cls) -> float | None:
        try:
            fields = cls._STAT.read_text().split("\n", 1)[0].split()
        except OSError:
            return None
        # cpu user nice system idle iowait irq softirq steal ...
        ticks = [int(value) for value in fields[1:9]]
        busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def __enter__(self) -> OtherLoad:
        busy = self._busy_seconds()
        if busy is not None:
            self._start = (busy, self._own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy = self._busy_seconds()
        if self._start is None or busy is None:
            return
        busy0, own0, wall0 = self._start
        wall = time.perf_counter() - wall0
        others = (busy - busy0) - (self._own_seconds() - own0)
        self.share = max(0.0, others) / (wall * (os.cpu_count() or 1))


def wait_until_quiet(threshold: float, timeout: float, probe: float = 1.0) -> float | None:
    """Sleep until other processes use at most ``threshold`` of the machine (or ``timeout``).

    Returns the last measured share (``None`` where it cannot be measured).
    """
    deadline = time.perf_counter() + timeout
    while True:
        with OtherLoad() as load:
            time.sleep(probe)
        if load.share is None or load.share <= threshold or time.perf_counter() >= deadline:
            return load.share


# --------------------------------------------------------------------------- statistics
def bootstrap_interval(
    groups: Sequence[Any],
    statistic: Callable[[Sequence[Any]], float],
    *,
    resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over ``groups`` resampled with replacement."""
    rng = random.Random(seed)
    draws = sorted(statistic(rng.choices(groups, k=len(groups))) for _ in range(resamples))
    tail = (1.0 - level) / 2.0
    low = draws[max(0, math.floor(tail * resamples))]
    high = draws[min(resamples - 1, math.ceil((1.0 - tail) * resamples) - 1)]
    return low, high


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, std
