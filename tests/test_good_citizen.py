"""DESIGN.md, "A good citizen": installing the package changes nothing in a Trainer that does not
ask for it (no entry point adds a callback, no dependency switches the progress bar)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import tomllib

from lightning_dnn_tricks.callbacks import OptimizerSupport

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _ours(entry: importlib.metadata.EntryPoint) -> bool:
    return entry.value.startswith("lightning_dnn_tricks") or entry.name == "lightning_dnn_tricks"


def test_no_entry_point_adds_callbacks_to_every_trainer() -> None:
    declared = PROJECT.get("entry-points", {})
    assert not [group for group in declared if group.startswith(("lightning", "pytorch_lightning"))]
    installed = importlib.metadata.entry_points(group="lightning.pytorch.callbacks_factory")
    assert not [entry for entry in installed if _ours(entry)]  # the venv's metadata agrees


def test_a_plain_trainer_gets_no_callback_of_ours() -> None:
    trainer = pl.Trainer(logger=False)
    assert not any(isinstance(cb, OptimizerSupport) for cb in trainer.callbacks)
    assert not any(
        type(cb).__module__.startswith("lightning_dnn_tricks") for cb in trainer.callbacks
    )


def test_building_a_trainer_prints_nothing_of_ours_and_imports_nothing_of_ours() -> None:
    code = (
        "import sys, lightning.pytorch as pl; pl.Trainer(logger=False); "
        "print('imported:', [m for m in sys.modules if m.startswith('lightning_dnn_tricks')])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert not re.search(r"Adding \d+ callbacks? from entry point", output), output
    assert "imported: []" in result.stdout, output


def test_core_dependencies_do_not_include_rich() -> None:
    """rich makes Lightning pick its Rich progress bar, which prints nothing in a non-TTY log."""
    names = [
        re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
        for requirement in PROJECT["dependencies"]
    ]
    assert "rich" not in [name.lower() for name in names]
    assert any(r.startswith("rich") for r in PROJECT["optional-dependencies"]["dev"])  # benchmarks


def test_the_package_never_imports_rich() -> None:
    """``ldt list``, ``ldt recipes`` and ``ldt demo`` print plain text: a core install runs them."""
    package = ROOT / "lightning_dnn_tricks"
    found = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "rich"]
    assert not found
    code = "from lightning_dnn_tricks import cli; cli.main(['list']); cli.main(['recipes'])"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "norm_loss" in result.stdout and "baseline_digits" in result.stdout
    assert not any("\u2500" <= c <= "\u257f" for c in result.stdout)  # no box drawing
