"""The ``ldt`` command, the shipped recipes and the main job."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import Namespace

from lightning_dnn_tricks import cli, demo
from lightning_dnn_tricks.callbacks import OptimizerSupport
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


# A tiny LightningCLI config (an 8-unit RNN on length-10 sequences): a fit takes about a second.
TINY = {
    "seed_everything": 0,
    "trainer": {
        "accelerator": "cpu",
        "fast_dev_run": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    },
    "model": {
        "class_path": "lightning_dnn_tricks.models.SequenceModel",
        "init_args": {"cell": "rnn", "input_size": 2, "hidden_size": 8, "task": "regression"},
    },
    "data": {
        "class_path": "lightning_dnn_tricks.data.AddingProblemDataModule",
        "init_args": {"seq_len": 10, "batch_size": 8, "num_train": 16, "num_val": 8},
    },
}


def _tiny_config(tmp_path: Path, optimizer: str | None = None, callbacks: Any = None) -> str:
    config: dict[str, Any] = {
        **TINY,
        "trainer": {**TINY["trainer"], "callbacks": callbacks},
        "model": {**TINY["model"], "init_args": dict(TINY["model"]["init_args"])},
    }
    if optimizer is not None:
        config["model"]["init_args"]["optimizer"] = {"class_path": optimizer}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def _supports(trainer: Any) -> int:
    return sum(isinstance(cb, OptimizerSupport) for cb in trainer.callbacks)


@pytest.mark.parametrize(
    "optimizer", ["lightning_dnn_tricks.optim.FrankWolfe", "lightning_dnn_tricks.optim.SRK2"]
)
def test_ldt_adds_optimizer_support_for_our_optimizers(tmp_path: Path, optimizer: str) -> None:
    """The unchanged-module path: a config that only names the optimizer trains under ``ldt``."""
    run = cli.run_lightning_cli(["fit", "-c", _tiny_config(tmp_path, optimizer)])
    assert _supports(run.trainer) == 1 and run.trainer.global_step == 1
    assert isinstance(run.trainer.callbacks[0], OptimizerSupport)


def test_ldt_adds_optimizer_support_for_lightningclis_optimizer_flag(tmp_path: Path) -> None:
    """LightningCLI's own ``--optimizer`` (it replaces the module's ``configure_optimizers``)."""
    args = ["fit", "-c", _tiny_config(tmp_path), "--optimizer=lightning_dnn_tricks.optim.SGDG2"]
    with pytest.warns(UserWarning, match="configure_optimizers"):
        run = cli.run_lightning_cli([*args, "--optimizer.lr=0.01"])
    assert _supports(run.trainer) == 1 and run.trainer.global_step == 1
    assert type(run.trainer.optimizers[0]).__name__ == "SGDG2"


def test_ldt_adds_nothing_when_listed_or_not_needed(tmp_path: Path) -> None:
    listed = [{"class_path": "lightning_dnn_tricks.callbacks.OptimizerSupport"}]
    fw = "lightning_dnn_tricks.optim.FrankWolfe"
    run = cli.run_lightning_cli(["fit", "-c", _tiny_config(tmp_path, fw, callbacks=listed)])
    assert _supports(run.trainer) == 1  # once
    run = cli.run_lightning_cli(["fit", "-c", _tiny_config(tmp_path, "torch.optim.AdamW")])
    assert _supports(run.trainer) == 0  # a Trainer that does not need it does not get it
    config = Namespace(trainer=Namespace(callbacks=None), optimizer=Namespace(class_path=fw))
    assert cli.add_optimizer_support(config) and not cli.add_optimizer_support(config)
    assert [c.class_path for c in config.trainer.callbacks] == [cli._OPTIMIZER_SUPPORT]


def test_the_errors_fix_works_in_a_plain_lightningcli(tmp_path: Path) -> None:
    """What the first-step error says to add in someone else's LightningCLI."""
    from lightning.pytorch import LightningDataModule, LightningModule
    from lightning.pytorch.cli import LightningCLI

    from lightning_dnn_tricks import TrickConfigurationError

    config = _tiny_config(tmp_path, "lightning_dnn_tricks.optim.FrankWolfe")
    kwargs: dict[str, Any] = {"subclass_mode_model": True, "subclass_mode_data": True}
    with pytest.raises(TrickConfigurationError, match=r"--trainer\.callbacks\+="):
        LightningCLI(LightningModule, LightningDataModule, args=["fit", "-c", config], **kwargs)
    flag = "--trainer.callbacks+=lightning_dnn_tricks.callbacks.OptimizerSupport"
    run = LightningCLI(
        LightningModule, LightningDataModule, args=["fit", "-c", config, flag], **kwargs
    )
    assert _supports(run.trainer) == 1 and run.trainer.global_step == 1
