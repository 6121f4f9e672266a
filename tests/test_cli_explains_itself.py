"""An ``ldt`` that explains itself: help, ``ldt list``, one-line errors, the LeafSpec filter,
progress in a log, recipes that log their tricks' metrics, and the demo's help."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightning.pytorch.callbacks import TQDMProgressBar

from lightning_dnn_tricks import TrickConfigurationError, cli, demo
from lightning_dnn_tricks.callbacks._log_progress import LogProgressBar, progress_bar_for_logs
from lightning_dnn_tricks.recipes import list_recipes
from lightning_dnn_tricks.registry import list_tricks

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (*cli.LIGHTNING_SUBCOMMANDS, "list", "recipes", "demo")


def _lists_every_command_and_recipe(text: str) -> None:
    for command in COMMANDS:
        assert re.search(rf"(^|[\s,{{]){command}\b", text, re.MULTILINE), command
    for name in list_recipes():
        assert name in text, name


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ldt: error:")]


# ------------------------------------------------------------------ help
def test_a_bare_ldt_lists_every_command_and_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main([])
    out = capsys.readouterr().out
    _lists_every_command_and_recipe(out)
    assert max(len(line) for line in out.splitlines()) <= 80


def test_help_lists_every_command_and_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config" in out  # LightningCLI's own help, then our epilog
    _lists_every_command_and_recipe(out.split("commands:", 1)[1])


# ------------------------------------------------------------------ ldt list
def test_list_fits_80_columns_and_shows_class_path_and_docs_page(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal still gets 80 columns
    cli.main(["list"])
    out = capsys.readouterr().out
    long = [line for line in out.splitlines() if len(line) > 80]
    assert not long, long
    for spec in list_tricks():
        assert cli.class_path(spec) in out and cli.docs_url(spec) in out, spec.name
    assert "lightning_dnn_tricks.callbacks.NormLoss" in out
    assert f"{cli.DOCS_URL}methods/norm_loss/" in out


def test_list_json_has_one_entry_per_registered_trick(capsys: pytest.CaptureFixture[str]) -> None:
    cli.main(["list", "--json"])
    entries = json.loads(capsys.readouterr().out)
    specs = list_tricks()
    assert [entry["name"] for entry in entries] == [spec.name for spec in specs]
    for entry, spec in zip(entries, specs, strict=True):
        module, _, name = entry["class_path"].rpartition(".")
        assert getattr(importlib.import_module(module), name) is spec.load()
        assert (ROOT / "docs" / entry["docs_page"]).is_file()
        assert entry["capabilities"]["precisions"] == list(spec.capabilities.precisions)
        assert entry["capabilities"]["effects"] == sorted(spec.capabilities.effects)


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("typed", "suggested"),
    [("norm_los_digits", "norm_loss_digits"), ("prunning", "pruning_digits"), ("sgdg2", "sgdg2")],
)
def test_an_unknown_recipe_gets_close_matches_in_one_line(
    typed: str, suggested: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", typed])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (line,) = captured.err.strip().splitlines()
    assert typed in line and f"did you mean {suggested}" in line


def test_config_strings_and_files_are_passed_on(tmp_path: Path) -> None:
    text = "{trainer: {max_epochs: 1}}"  # jsonargparse takes a YAML string for --config too
    assert cli._resolve_config_arguments(["fit", "--config", text])[-1] == text
    path = tmp_path / "mine.yaml"
    path.write_text("trainer: {}\n")
    assert cli._resolve_config_arguments(["fit", f"--config={path}"])[-1] == f"--config={path}"
    with pytest.raises(cli.UnknownRecipeError, match="no recipe or file"):
        cli._resolve_config_arguments(["fit", "-c", str(tmp_path / "missing.yaml")])


def _tiny_config(tmp_path: Path, trainer: dict[str, Any], optimizer: str | None = None) -> str:
    init_args: dict[str, Any] = {"cell": "rnn", "input_size": 2, "hidden_size": 8}
    if optimizer is not None:
        init_args["optimizer"] = {"class_path": optimizer}
    config = {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "logger": False,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "max_epochs": 1,
            "default_root_dir": str(tmp_path),
            **trainer,
        },
        "model": {
            "class_path": "lightning_dnn_tricks.models.SequenceModel",
            "init_args": {**init_args, "task": "regression"},
        },
        "data": {
            "class_path": "lightning_dnn_tricks.data.AddingProblemDataModule",
            "init_args": {"seq_len": 10, "batch_size": 8, "num_train": 16, "num_val": 8},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


NEGATIVE_STRENGTH = [
    {"class_path": "lightning_dnn_tricks.callbacks.NormLoss", "init_args": {"strength": -1}}
]


def test_a_refused_value_prints_one_line_naming_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _tiny_config(tmp_path, {"callbacks": NEGATIVE_STRENGTH})
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", config])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    (line,) = _error_lines(err)
    assert "Traceback" not in err
    assert "NormLoss: `strength` must be in (0.0, inf], got -1.0." in line
    assert "change trainer.callbacks[0].init_args.strength" in line
    assert "--traceback" in line and "LDT_TRACEBACK=1" in line


def test_a_setup_refusal_prints_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _tiny_config(
        tmp_path, {"accumulate_grad_batches": 2}, optimizer="lightning_dnn_tricks.optim.SGDG2"
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fit", "-c", config])
    assert exit_info.value.code == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "SGDG2: accumulate_grad_batches=2 is not supported" in line
    assert "Set accumulate_grad_batches=1" in line


def test_the_traceback_is_shown_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _tiny_config(tmp_path, {"callbacks": NEGATIVE_STRENGTH})
    with pytest.raises(TrickConfigurationError) as error:
        cli.main(["fit", "--traceback", "-c", config])  # the flag never reaches LightningCLI
    causes = []
    cause: BaseException | None = error.value
    while cause is not None:
        causes.append(cause)
        cause = cause.__cause__
    assert any("`strength` must be in" in str(c) and type(c) is ValueError for c in causes)
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    with pytest.raises(TrickConfigurationError, match="strength"):
        cli.main(["fit", "-c", config])


def test_other_errors_are_left_alone() -> None:
    assert cli.configuration_error(ValueError("not from a trick")) is None
    refusal = TrickConfigurationError("X: a conflict. The fix.")
    assert cli.configuration_error(refusal) is refusal


# ------------------------------------------------------------------ warnings
def test_only_the_leafspec_warning_is_filtered(capsys: pytest.CaptureFixture[str]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.main(["recipes"])  # installs the filter, as every ldt command does
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, "
            "TreeSpec) and treespec.is_leaf()` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(warning.message) for warning in caught] == ["something else is deprecated"]


# ------------------------------------------------------------------ progress in a log
class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def test_the_log_progress_bar_only_without_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdout", _Stream(tty=True))
    assert progress_bar_for_logs(None, []) is None  # a terminal: Lightning's choice
    monkeypatch.setattr(sys, "stdout", _Stream(tty=False))
    assert isinstance(progress_bar_for_logs(None, []), LogProgressBar)
    assert isinstance(progress_bar_for_logs(True, []), LogProgressBar)
    assert progress_bar_for_logs(False, []) is None  # the progress bar is off
    assert progress_bar_for_logs(None, [TQDMProgressBar()]) is None  # one is configured


def test_a_log_gets_one_progress_line_per_epoch_and_no_leafspec_warning(tmp_path: Path) -> None:
    """``ldt fit`` with standard output a pipe, as in a batch job's log."""
    config = _tiny_config(tmp_path, {"max_epochs": 2})
    result = subprocess.run(
        [sys.executable, "-m", "lightning_dnn_tricks.cli", "fit", "-c", config],
        capture_output=True,  # bytes: text mode would turn tqdm's carriage returns into lines
        timeout=240,
        cwd=tmp_path,
    )
    stdout, stderr = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 0, stderr
    shown = [line.rsplit("\r", 1)[-1] for line in stdout.split("\n")]  # what a terminal shows
    epochs = [line for line in shown if line.startswith("Epoch")]
    assert [line.split(":")[0] for line in epochs] == ["Epoch 0", "Epoch 1"], epochs
    assert all("100%" in line and "val/mse=" in line for line in epochs), epochs
    assert "LeafSpec" not in stderr


# ------------------------------------------------------------------ recipes
@pytest.mark.parametrize("recipe", sorted(list_recipes()))
def test_recipes_log_within_an_epoch(recipe: str) -> None:
    """Lightning logs every ``log_every_n_steps`` steps: a longer interval than an epoch logs
    no step metric (the tricks' metrics are step metrics)."""
    config = yaml.safe_load(list_recipes()[recipe].read_text())
    data = config["data"]
    module, _, name = data["class_path"].rpartition(".")
    datamodule = getattr(importlib.import_module(module), name)(**data.get("init_args", {}))
    datamodule.prepare_data()
    datamodule.setup("fit")
    batches = len(datamodule.train_dataloader())
    assert 1 <= config["trainer"]["log_every_n_steps"] <= batches


def test_the_pruning_recipe_exports_under_the_log_directory() -> None:
    config = yaml.safe_load(list_recipes()["pruning_digits"].read_text())
    (callback,) = config["trainer"]["callbacks"]
    assert not Path(callback["init_args"]["export_path"]).is_absolute()


# ------------------------------------------------------------------ the demo
def test_demo_help_is_plain_text_with_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and ":func:" not in out
    for default in ("resnet18", "6", "64", "0.001", "auto"):
        assert f"(default: {default})" in out, default


def test_demo_uses_the_available_accelerator_and_has_no_overhead_column() -> None:
    args = demo.parse_args([])
    assert args.accelerator == "auto"
    table = demo.results_table([demo.DemoResult("baseline", 0.9, 12.0, 0.02)], args)
    assert "overhead" not in table and "ms/step" in table
    assert "interleaved" in (demo.__doc__ or "")  # the docstring says why the column went
