"""Tests of the reference LightningModules (TimmClassifier, SequenceModel)."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any, cast
from unittest import mock

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.cli import LightningCLI
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics import Metric

from lightning_dnn_tricks.models import SequenceModel, TimmClassifier, adamw

TIMM_CASES = [
    pytest.param("resnet18", {}, id="resnet18"),
    pytest.param("mobilenetv3_small_050", {}, id="mobilenetv3_small_050"),
    pytest.param("vit_tiny_patch16_224", {"img_size": 32}, id="vit_tiny"),
]


def make_trainer(tmp_path: Path, **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_steps": 2,
        "limit_val_batches": 1,
        "limit_test_batches": 1,
        "num_sanity_val_steps": 0,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    options.update(kwargs)
    return pl.Trainer(**options)


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 4) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def image_loader(num_classes: int = 10, in_chans: int = 3, n: int = 8) -> DataLoader:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, in_chans, 32, 32, generator=generator)
    return loader(x, torch.randint(0, num_classes, (n,), generator=generator))


# --- TimmClassifier -----------------------------------------------------------------------


@pytest.mark.parametrize(("model_name", "model_kwargs"), TIMM_CASES)
def test_timm_classifier_fits_two_steps(
    tmp_path: Path, model_name: str, model_kwargs: dict[str, Any]
) -> None:
    model = TimmClassifier(model_name, num_classes=5, model_kwargs=model_kwargs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    data = image_loader(num_classes=5)
    trainer = make_trainer(tmp_path)
    trainer.fit(model, data, data)
    assert trainer.global_step == 2
    assert {"train/loss", "train/acc", "val/loss", "val/acc"} <= set(trainer.callback_metrics)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])


def test_timm_classifier_test_metrics_and_single_channel(tmp_path: Path) -> None:
    model = TimmClassifier("resnet18", num_classes=3, in_chans=1, label_smoothing=0.1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)
    (metrics,) = make_trainer(tmp_path).test(model, image_loader(num_classes=3, in_chans=1))
    assert set(metrics) == {"test/loss", "test/acc"}
    assert 0.0 <= metrics["test/acc"] <= 1.0


def test_timm_classifier_accuracy_is_micro_average() -> None:
    model = TimmClassifier("resnet18", num_classes=4)
    metric = cast(Metric, model.metrics["val_acc"])
    # 3 of 4 correct; macro-averaging over the classes present would give a different number.
    metric.update(torch.eye(4)[[0, 0, 0, 1]], torch.tensor([0, 0, 0, 2]))
    assert metric.compute().item() == pytest.approx(0.75)


def test_unknown_timm_model_suggests_close_names() -> None:
    with pytest.raises(ValueError, match=r"`model_name`.*'resnet181'.*resnet18"):
        TimmClassifier("resnet181")


def test_pretrained_tag_is_accepted() -> None:
    model = TimmClassifier("resnet18.a1_in1k", num_classes=2)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_default_optimizer_is_adamw() -> None:
    model = TimmClassifier("resnet18")
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == pytest.approx(1e-3)
    assert "optimizer" not in model.hparams


def test_scheduler_configuration() -> None:
    step = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)
    model = SequenceModel(scheduler=step, scheduler_interval="step")
    config = model.configure_optimizers()
    assert isinstance(config["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert config["lr_scheduler"]["interval"] == "step"
    plateau = SequenceModel(scheduler=torch.optim.lr_scheduler.ReduceLROnPlateau)
    assert plateau.configure_optimizers()["lr_scheduler"]["monitor"] == "val/loss"


# --- SequenceModel ------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize(
    ("task", "readout", "output_size", "target_shape"),
    [
        ("regression", "last", 1, (8, 1)),
        ("regression", "last", 1, (8,)),
        ("regression", "sequence", 2, (8, 6, 2)),
        ("classification", "last", 3, (8,)),
        ("classification", "sequence", 4, (8, 6)),
    ],
)
def test_sequence_model_fits(
    tmp_path: Path,
    cell: str,
    task: str,
    readout: str,
    output_size: int,
    target_shape: tuple[int, ...],
) -> None:
    model = SequenceModel(
        cell=cell,  # type: ignore[arg-type]
        input_size=2,
        hidden_size=8,
        num_layers=2,
        output_size=output_size,
        task=task,  # type: ignore[arg-type]
        readout=readout,  # type: ignore[arg-type]
    )
    x = torch.randn(8, 6, 2)
    out_shape = (8, output_size) if readout == "last" else (8, 6, output_size)
    assert model(x).shape == out_shape
    if task == "regression":
        y = torch.randn(target_shape)
    else:
        y = torch.randint(0, output_size, target_shape)
    trainer = make_trainer(tmp_path)
    trainer.fit(model, loader(x, y), loader(x, y))
    metric = "mse" if task == "regression" else "acc"
    assert {"train/loss", f"train/{metric}", "val/loss", f"val/{metric}"} <= set(
        trainer.callback_metrics
    )
    assert torch.isfinite(trainer.callback_metrics["val/loss"])


def test_sequence_model_rnn_is_vanilla_tanh() -> None:
    model = SequenceModel("rnn")
    assert type(model.rnn) is torch.nn.RNN
    assert model.rnn.nonlinearity == "tanh"
    assert model.rnn.batch_first


def test_sequence_model_regression_loss_is_mse() -> None:
    model = SequenceModel("gru", output_size=2)
    x, y = torch.randn(3, 5, 2), torch.randn(3, 2)
    loss, preds, _ = model.compute_loss((x, y))
    torch.testing.assert_close(loss, torch.mean((model(x) - y) ** 2))
    assert preds.shape == (3, 2)


def test_sequence_model_rejects_bad_target_shape() -> None:
    model = SequenceModel("lstm", output_size=3, task="classification", readout="sequence")
    with pytest.raises(ValueError, match=r"shape \(2, 5\).*got \(2,\)"):
        model.compute_loss((torch.randn(2, 5, 2), torch.zeros(2, dtype=torch.long)))


def test_resume_from_checkpoint(tmp_path: Path) -> None:
    """Saved hyperparameters load with ``weights_only=True`` (no callables in them)."""
    x, y = torch.randn(8, 6, 2), torch.randn(8, 1)
    optimizer = functools.partial(torch.optim.SGD, lr=0.1)
    trainer = make_trainer(tmp_path, enable_checkpointing=True)
    trainer.fit(SequenceModel(optimizer=optimizer), loader(x, y), loader(x, y))
    ckpt = str(next(tmp_path.rglob("*.ckpt")))
    resumed = make_trainer(tmp_path, max_steps=4, enable_checkpointing=True)
    resumed.fit(SequenceModel(optimizer=optimizer), loader(x, y), loader(x, y), ckpt_path=ckpt)
    assert resumed.global_step == 4
    assert isinstance(SequenceModel.load_from_checkpoint(ckpt), SequenceModel)


# --- argument validation ------------------------------------------------------------------

BAD_ARGUMENTS: list[tuple[type[pl.LightningModule], dict[str, Any], str]] = [
    (TimmClassifier, {"model_name": ""}, "model_name"),
    (TimmClassifier, {"num_classes": 1}, "num_classes"),
    (TimmClassifier, {"num_classes": 2.5}, "num_classes"),
    (TimmClassifier, {"in_chans": 0}, "in_chans"),
    (TimmClassifier, {"label_smoothing": 1.0}, "label_smoothing"),
    (TimmClassifier, {"label_smoothing": -0.1}, "label_smoothing"),
    (TimmClassifier, {"model_kwargs": ["img_size"]}, "model_kwargs"),
    (TimmClassifier, {"optimizer": "sgd"}, "optimizer"),
    (TimmClassifier, {"scheduler": 3}, "scheduler"),
    (TimmClassifier, {"scheduler_interval": "batch"}, "scheduler_interval"),
    (SequenceModel, {"cell": "transformer"}, "cell"),
    (SequenceModel, {"input_size": 0}, "input_size"),
    (SequenceModel, {"hidden_size": -1}, "hidden_size"),
    (SequenceModel, {"num_layers": 0}, "num_layers"),
    (SequenceModel, {"output_size": 0}, "output_size"),
    (SequenceModel, {"task": "classification", "output_size": 1}, "output_size"),
    (SequenceModel, {"task": "segmentation"}, "task"),
    (SequenceModel, {"readout": "first"}, "readout"),
    (SequenceModel, {"optimizer": None}, "optimizer"),
]


@pytest.mark.parametrize(
    ("cls", "kwargs", "name"),
    BAD_ARGUMENTS,
    ids=[
        f"{cls.__name__}-{'-'.join(kwargs)}-{i}" for i, (cls, kwargs, _) in enumerate(BAD_ARGUMENTS)
    ],
)
def test_bad_arguments_raise(cls: type, kwargs: dict[str, Any], name: str) -> None:
    with pytest.raises(ValueError, match=rf"`{name}`") as info:
        cls(**kwargs)
    assert repr(kwargs[name]) in str(info.value)


# --- LightningCLI -------------------------------------------------------------------------

CLI_TRAINER_ARGS = ["--trainer.logger=false", "--trainer.enable_checkpointing=false"]


def make_cli(model_class: type[pl.LightningModule], args: list[str]) -> LightningCLI:
    # `sys.argv` is pytest's: hide it so that LightningCLI does not warn about it.
    with mock.patch.object(sys, "argv", ["ldt"]):
        return LightningCLI(
            model_class,
            run=False,
            save_config_callback=None,
            seed_everything_default=False,
            args=[*args, *CLI_TRAINER_ARGS],
        )


def test_cli_yaml_optimizer_is_injected(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "model:\n"
        "  model_name: resnet18\n"
        "  num_classes: 4\n"
        "  optimizer:\n"
        "    class_path: torch.optim.SGD\n"
        "    init_args: {lr: 0.05}\n"
        "  scheduler:\n"
        "    class_path: torch.optim.lr_scheduler.StepLR\n"
        "    init_args: {step_size: 3}\n"
    )
    cli = make_cli(TimmClassifier, ["--config", str(config)])
    assert isinstance(cli.model, TimmClassifier)
    config_out = cli.model.configure_optimizers()
    optimizer = config_out["optimizer"]
    assert type(optimizer) is torch.optim.SGD
    assert optimizer.defaults["lr"] == pytest.approx(0.05)
    # The default is a function, so no AdamW argument leaks into SGD through jsonargparse.
    assert optimizer.defaults["weight_decay"] == 0.0
    assert config_out["lr_scheduler"]["scheduler"].step_size == 3


def test_cli_default_optimizer_round_trips(tmp_path: Path) -> None:
    cli = make_cli(
        SequenceModel, ["--model.cell=gru", "--model.task=classification", "--model.output_size=3"]
    )
    dumped = cli.parser.dump(cli.config)
    assert "optimizer: lightning_dnn_tricks.models.adamw" in dumped
    config = tmp_path / "dumped.yaml"
    config.write_text(dumped)
    again = make_cli(SequenceModel, ["--config", str(config)])
    assert again.model.hparams["cell"] == "gru"
    assert again.model.optimizer_factory is adamw
    assert isinstance(again.model.configure_optimizers(), torch.optim.AdamW)


def test_cli_rejects_unknown_literal() -> None:
    with pytest.raises(SystemExit):
        make_cli(SequenceModel, ["--model.cell=transformer"])
