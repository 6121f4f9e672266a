"""The ``ldt`` command, the shipped recipes and the main job."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lightning_dnn_tricks import cli, demo
from lightning_dnn_tricks.recipes import list_recipes, resolve_recipe


def test_list_shows_every_trick(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["list"])
    assert "norm_loss" in capsys.readouterr().out


def test_recipes_lists_shipped_files(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["recipes"])
    out = capsys.readouterr().out
    assert "norm_loss_digits" in out and "baseline_digits" in out


def test_recipe_names_resolve_to_shipped_files() -> None:
    path = resolve_recipe("norm_loss_digits")
    assert path == str(list_recipes()["norm_loss_digits"])
    assert resolve_recipe("recipes/norm_loss_digits.yaml").endswith("norm_loss_digits.yaml")
    assert cli._resolve_config_arguments(["fit", "-c", "baseline_digits"])[-1].endswith(".yaml")
    assert cli._resolve_config_arguments(["fit", "--config=baseline_digits"])[-1].endswith(".yaml")


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(list_recipes()))
def test_every_recipe_runs(recipe: str) -> None:
    cli.main(
        [
            "fit",
            "-c",
            recipe,
            "--trainer.fast_dev_run=1",
            "--trainer.accelerator=cpu",
            "--trainer.enable_progress_bar=false",
        ]
    )


def test_ldt_console_script_is_installed() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightning_dnn_tricks.cli", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "norm_loss" in result.stdout


@pytest.mark.slow
def test_demo_runs_every_configuration() -> None:
    results = demo.main(["--epochs", "1", "--max-steps", "2", "--model", "mobilenetv3_small_050"])
    assert [r.name for r in results] == [c.name for c in demo.CONFIGURATIONS]
    assert all(0.0 <= r.test_acc <= 1.0 and r.step_seconds > 0 for r in results)


def test_plain_pytorch_layers_do_not_import_lightning() -> None:
    code = (
        "import sys, lightning_dnn_tricks.functional, lightning_dnn_tricks.nn, "
        "lightning_dnn_tricks.optim; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
