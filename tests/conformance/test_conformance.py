"""Conformance suites that every registered trick must pass."""

from __future__ import annotations

import contextlib
import copy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import yaml
from backbones import BACKBONES, random_batches
from ldt_testing import QUIET_TRAINER
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import SingleDeviceStrategy
from trick_cases import TRICK_CASES, TrickCase

from lightning_dnn_tricks import (
    Capabilities,
    TrickConfigurationError,
    TrickWarning,
    get_trick,
    list_tricks,
)
from lightning_dnn_tricks.callbacks import OptimizerSupport
from lightning_dnn_tricks.callbacks.base import TrickCallback
from lightning_dnn_tricks.data import DigitsDataModule
from lightning_dnn_tricks.models import TimmClassifier
from lightning_dnn_tricks.registry import ALL_PRECISIONS

HERE = Path(__file__).resolve().parent

# These runs last a few steps, far shorter than the pruning schedules on purpose: the pruning
# callbacks' warning about it is expected here (and tested in tests/callbacks).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*ends the run before the schedule does:lightning_dnn_tricks.TrickWarning"
)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _assert_trained(before: dict[str, torch.Tensor], module: torch.nn.Module) -> None:
    after = module.state_dict()
    # Structure-changing tricks rename some keys (parametrisations): compare the shared ones.
    changed = [
        k
        for k, v in before.items()
        if k in after and v.is_floating_point() and not torch.equal(v, after[k])
    ]
    assert changed, "training did not change any weight"
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())


def _use_trick_optimizer(model: pl.LightningModule, case: TrickCase) -> pl.LightningModule:
    """Optimizer tricks: the reference model (a SupervisedModule) trains with the trick's."""
    if case.optimizer is not None:
        model.optimizer_factory = case.optimizer  # type: ignore[assignment]
    return model


def test_every_registered_trick_has_test_settings() -> None:
    registered = {spec.name for spec in list_tricks()}
    assert registered == set(TRICK_CASES), (
        "every registered trick needs an entry in tests/conformance/trick_cases.py "
        f"(missing: {registered - set(TRICK_CASES)}, stale: {set(TRICK_CASES) - registered})"
    )


@pytest.mark.slow
@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_trains_on_every_backbone(trick_case: TrickCase, backbone: str) -> None:
    build_model, _ = BACKBONES[backbone]
    pl.seed_everything(0)
    model = _use_trick_optimizer(build_model(), trick_case)
    before = _snapshot(model)
    applies = trick_case.backbones is None or backbone in trick_case.backbones
    # A backbone the trick does not apply to must get the "matched no layer" warning, and train.
    expect = contextlib.nullcontext() if applies else pytest.warns(TrickWarning, match="matched no")
    callbacks = trick_case.callbacks_for(backbone)
    trainer = pl.Trainer(max_steps=2, callbacks=callbacks, **QUIET_TRAINER)
    with expect:
        trainer.fit(model, random_batches(backbone))
    _assert_trained(before, model)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert not applies or trick_case.active_metric in trainer.callback_metrics


def _digits_run(
    trick_case: TrickCase, max_steps: int, ckpt_path: str | None = None, **trainer_kwargs: object
) -> pl.Trainer:
    pl.seed_everything(0)
    model = TimmClassifier(
        "resnet18",
        num_classes=10,
        in_chans=1,
        optimizer=trick_case.optimizer
        or (lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.0)),
    )
    data = DigitsDataModule(batch_size=32, image_size=8, channels=1, seed=0)
    trainer = pl.Trainer(
        max_steps=max_steps,
        deterministic=True,
        limit_val_batches=0,
        callbacks=[*trick_case.callbacks(), *trainer_kwargs.pop("callbacks", [])],  # type: ignore[misc]
        **{**QUIET_TRAINER, **trainer_kwargs},
    )
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.slow
def test_resume_mid_epoch_is_bit_exact(trick_case: TrickCase, tmp_path: Path) -> None:
    """A run that crashed at step k and resumed with ``ckpt_path`` equals an uninterrupted run."""
    total, crash_at = 14, 9  # the digits training split has 40 batches of 32: mid-epoch
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=crash_at, save_top_k=-1)
    uninterrupted = _digits_run(
        trick_case, total, callbacks=[checkpoints], enable_checkpointing=True
    )
    pl.seed_everything(0)
    initial = _snapshot(TimmClassifier("resnet18", num_classes=10, in_chans=1))
    final = _snapshot(uninterrupted.lightning_module)
    assert any(
        not torch.equal(initial[k], final[k])
        for k in final
        if k in initial and final[k].is_floating_point()
    )

    checkpoint = next(tmp_path.glob(f"*step={crash_at}.ckpt"))
    resumed = _digits_run(trick_case, total, ckpt_path=str(checkpoint))
    assert resumed.global_step == total
    for key, value in resumed.lightning_module.state_dict().items():
        assert torch.equal(value, final[key]), f"{key} differs after resume"


@pytest.mark.slow
def test_ddp_two_processes_leave_identical_weights(trick_name: str, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(HERE / "ddp_worker.py"), trick_name, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=HERE,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt")
    rank1 = torch.load(tmp_path / "rank1.pt")
    initial = torch.load(tmp_path / "initial.pt")
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"{key} differs between ranks"
    assert any(not torch.equal(initial[k], rank0[k]) for k in rank0 if k in initial)
    assert (tmp_path / "active").read_text() == "True"


def test_bad_arguments_raise_value_error_naming_the_argument(trick_case: TrickCase) -> None:
    assert trick_case.bad_arguments, "list the out-of-range arguments of this trick"
    for kwargs, argument in trick_case.bad_arguments:
        with pytest.raises(ValueError, match=f"`{argument}`"):
            trick_case.build_with(**kwargs)


@pytest.mark.slow
def test_bf16_mixed_trains(trick_case: TrickCase) -> None:
    build_model, _ = BACKBONES["resnet18"]
    pl.seed_everything(0)
    model = _use_trick_optimizer(build_model(), trick_case)
    before = _snapshot(model)
    trainer = pl.Trainer(
        max_steps=2, precision="bf16-mixed", callbacks=trick_case.callbacks(), **QUIET_TRAINER
    )
    trainer.fit(model, random_batches("resnet18"))
    _assert_trained(before, model)


def _fake_trainer(precision: str, accumulate: int = 1) -> SimpleNamespace:
    return SimpleNamespace(
        precision=precision,
        strategy=SingleDeviceStrategy(torch.device("cpu")),
        accumulate_grad_batches=accumulate,
    )


def test_declared_capabilities_are_enforced_at_setup(trick_name: str) -> None:
    """Unsupported precisions, accumulation and manual optimisation raise; supported ones pass."""
    spec = get_trick(trick_name)
    caps = spec.capabilities
    module = pl.LightningModule()
    case = TRICK_CASES[trick_name]
    if case.optimizer is not None:
        _check_optimizer_capabilities(case, caps)
        return
    for callback in TRICK_CASES[trick_name].callbacks():
        if not isinstance(callback, TrickCallback):
            continue
        for precision in ALL_PRECISIONS:
            if precision in caps.precisions:
                callback.check_trainer(_fake_trainer(precision), module)  # type: ignore[arg-type]
            else:
                with pytest.raises(TrickConfigurationError, match=precision):
                    callback.check_trainer(_fake_trainer(precision), module)  # type: ignore[arg-type]
        accumulating = _fake_trainer("32-true", accumulate=2)
        if caps.gradient_accumulation:
            callback.check_trainer(accumulating, module)  # type: ignore[arg-type]
        else:
            with pytest.raises(TrickConfigurationError, match="accumulate_grad_batches"):
                callback.check_trainer(accumulating, module)  # type: ignore[arg-type]
        module.automatic_optimization = False
        if caps.manual_optimization:
            callback.check_trainer(_fake_trainer("32-true"), module)  # type: ignore[arg-type]
        else:
            with pytest.raises(TrickConfigurationError, match="manual"):
                callback.check_trainer(_fake_trainer("32-true"), module)  # type: ignore[arg-type]
        module.automatic_optimization = True


def _check_optimizer_capabilities(case: TrickCase, caps: Capabilities) -> None:
    """Optimizer tricks: OptimizerSupport refuses at fit start what the optimizer cannot do."""
    assert case.optimizer is not None
    optimizer = case.optimizer(torch.nn.Linear(2, 1).parameters())
    support = OptimizerSupport()
    module = pl.LightningModule()

    def check(trainer: SimpleNamespace) -> None:
        support.check(trainer, module, optimizer)  # type: ignore[arg-type]

    for precision in ALL_PRECISIONS:
        if precision in caps.precisions:
            check(_fake_trainer(precision))
        else:
            with pytest.raises(TrickConfigurationError, match=precision):
                check(_fake_trainer(precision))
    if caps.gradient_accumulation:
        check(_fake_trainer("32-true", accumulate=2))
    else:
        with pytest.raises(TrickConfigurationError, match="accumulate_grad_batches=2"):
            check(_fake_trainer("32-true", accumulate=2))
    module.automatic_optimization = False
    if caps.manual_optimization:
        check(_fake_trainer("32-true"))
    else:
        with pytest.raises(TrickConfigurationError, match="manual"):
            check(_fake_trainer("32-true"))


def test_round_trips_through_lightning_cli_yaml(trick_name: str, tmp_path: Path) -> None:
    from lightning.pytorch.cli import LightningCLI

    spec = get_trick(trick_name)
    case = TRICK_CASES[trick_name]
    trick = {"class_path": spec.import_path.replace(":", "."), "init_args": case.cli_init_args}
    is_optimizer = case.optimizer is not None
    config = {
        "trainer": {"logger": False, "callbacks": [] if is_optimizer else [trick]},
        "model": {
            "class_path": "lightning_dnn_tricks.models.TimmClassifier",
            "init_args": {
                "model_name": "resnet18",
                "num_classes": 10,
                **({"optimizer": trick} if is_optimizer else {}),
            },
        },
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = LightningCLI(
        pl.LightningModule,
        subclass_mode_model=True,
        run=False,
        args=["--config", str(path)],
        save_config_callback=None,
    )
    trick_class = spec.load()
    if is_optimizer:
        optimizer = cli.model.configure_optimizers()
        assert type(optimizer) is trick_class
        for option, value in case.cli_init_args.items():
            found = optimizer.param_groups[0].get(option, getattr(optimizer, option, None))
            assert found == value, option
        copy.deepcopy(optimizer)
        return
    instances = [cb for cb in cli.trainer.callbacks if isinstance(cb, trick_class)]
    assert len(instances) == 1
    for attribute, value in case.cli_init_args.items():
        assert getattr(instances[0], attribute) == value
    copy.deepcopy(instances[0])  # picklable/copyable for checkpointing and spawn strategies
