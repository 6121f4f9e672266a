"""IterativeMagnitudePruning and AcceleratedIMP in Lightning runs (tiny conv net, 4 steps/epoch)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from ldt_testing import QUIET_TRAINER, TinyConvNet, tiny_loader
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import Logger

from lightning_dnn_tricks import TrickConfigurationError, TrickWarning
from lightning_dnn_tricks.callbacks import AcceleratedIMP, IterativeMagnitudePruning
from lightning_dnn_tricks.data.loader import ResumableDataLoader

LR = 0.1


class ScheduledNet(TinyConvNet):
    """TinyConvNet with SGD (momentum, weight decay) and a per-step exponential LR schedule."""

    def __init__(self) -> None:
        super().__init__(lr=LR, weight_decay=1e-2, momentum=0.9)

    def configure_optimizers(self) -> Any:
        optimizer = super().configure_optimizers()
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


class Probe(Callback):
    """Records weights and lrs at epoch starts (after the pruning callback) and before steps."""

    def __init__(self) -> None:
        self.epoch_start: dict[int, dict[str, Any]] = {}
        self.epoch_end: dict[int, dict[str, torch.Tensor]] = {}
        self.at_step: dict[int, dict[str, Any]] = {}
        self.step_lrs: dict[int, float] = {}

    def _state(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        optimizer = trainer.optimizers[0]
        return {
            "model": copy.deepcopy(pl_module.state_dict()),
            "lr": optimizer.param_groups[0]["lr"],
            "optimizer_state": len(optimizer.state),
        }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_start[trainer.current_epoch] = self._state(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_end[trainer.current_epoch] = copy.deepcopy(pl_module.state_dict())

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        self.at_step.setdefault(trainer.global_step, self._state(trainer, pl_module))

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, opt: Any) -> None:
        self.step_lrs[trainer.global_step] = opt.param_groups[0]["lr"]


def _fit(
    callback: IterativeMagnitudePruning, *extra: Callback, ckpt_path: str | None = None, **kw: Any
) -> tuple[pl.Trainer, ScheduledNet]:
    pl.seed_everything(0)
    model = ScheduledNet()
    trainer = pl.Trainer(
        max_epochs=callback.total_epochs,
        deterministic=True,
        callbacks=[callback, *extra],
        **{**QUIET_TRAINER, **kw},
    )
    loader = tiny_loader()  # resumable: a run resumed mid-epoch sees the same batches
    data = ResumableDataLoader(loader.dataset, batch_size=loader.batch_size)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return trainer, model


def _masked_entries_are_zero(
    callback: IterativeMagnitudePruning, model: pl.LightningModule
) -> None:
    params = dict(model.named_parameters())
    for name, mask in callback.masks.items():
        assert torch.all(params[name][~mask] == 0), name


def test_rounds_reach_the_target_sparsity_and_masks_hold_with_momentum_and_decay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    callback = IterativeMagnitudePruning(amount=0.5, rounds=3, epochs_per_round=1)
    with caplog.at_level(logging.INFO):
        trainer, model = _fit(callback)
    total = sum(m.numel() for m in callback.masks.values())
    pruned = sum(int((~m).sum()) for m in callback.masks.values())
    assert abs(pruned - (1 - 0.5**3) * total) <= 1
    assert [entry["round"] for entry in callback.history] == [0, 1, 2, 3]
    assert [entry["sparsity"] for entry in callback.history][:3] == [0.0, 0.5, 0.75]
    _masked_entries_are_zero(callback, model)
    optimizer = trainer.optimizers[0]
    for name, mask in callback.masks.items():
        momentum = optimizer.state[dict(model.named_parameters())[name]]["momentum_buffer"]
        assert torch.all(momentum[~mask] == 0)
    assert float(trainer.callback_metrics["pruning/sparsity"]) == pytest.approx(0.875, abs=0.01)
    assert "round 3/3" in caplog.text and "sparsity" in caplog.text


class AdamWNet(TinyConvNet):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("net", [ScheduledNet, AdamWNet])
def test_masked_optimizer_state_stays_zero_without_per_step_masking(net: type) -> None:
    # "finetune" keeps the optimizer state across rounds: only the masking at each round change
    # and the masked gradients keep the pruned entries' momentum / Adam moments at zero.
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=2, epochs_per_round=2, rewind="finetune"
    )
    pl.seed_everything(0)
    model = net()
    trainer = pl.Trainer(max_epochs=callback.total_epochs, callbacks=[callback], **QUIET_TRAINER)
    trainer.fit(model, tiny_loader())
    _masked_entries_are_zero(callback, model)
    params = dict(model.named_parameters())
    checked = 0
    for name, mask in callback.masks.items():
        assert not mask.all(), name
        for value in trainer.optimizers[0].state[params[name]].values():
            if isinstance(value, torch.Tensor) and value.shape == mask.shape:
                assert torch.all(value[~mask] == 0), name
                assert torch.any(value[mask] != 0), name
                checked += 1
    assert checked == len(callback.masks) * (1 if net is ScheduledNet else 2)


@pytest.mark.parametrize("rewind", ["init", "lr"])
def test_rewind_to_init_and_lr_rewinding(rewind: str) -> None:
    probe = Probe()
    callback = IterativeMagnitudePruning(amount=0.5, rounds=1, epochs_per_round=1, rewind=rewind)  # type: ignore[arg-type]
    _fit(callback, probe)
    after = probe.epoch_start[1]
    assert after["lr"] == LR  # the schedule restarts
    assert after["optimizer_state"] == 0  # momentum cleared
    source = probe.epoch_start[0]["model"] if rewind == "init" else probe.epoch_end[0]
    masks = callback.masks
    for key, value in after["model"].items():
        expected = source[key] * masks[key] if key in masks else source[key]
        assert torch.equal(value, expected), key
    assert probe.step_lrs[4] == LR  # the first step of round 1 uses the initial lr


def test_late_rewinding_restores_the_weights_and_lr_of_step_k() -> None:
    probe = Probe()
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=1, epochs_per_round=1, rewind="weights", rewind_step=2
    )
    _fit(callback, probe)
    snapshot, after = probe.at_step[2], probe.epoch_start[1]
    assert after["lr"] == pytest.approx(LR * 0.9**2)
    assert after["lr"] == snapshot["lr"]
    for key, value in after["model"].items():
        mask = callback.masks.get(key)
        expected = snapshot["model"][key] * mask if mask is not None else snapshot["model"][key]
        assert torch.equal(value, expected), key


def test_finetune_keeps_weights_and_the_final_lr() -> None:
    probe = Probe()
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=1, epochs_per_round=2, rewind="finetune"
    )
    _, model = _fit(callback, probe)
    final_lr = probe.epoch_start[2]["lr"]
    assert final_lr == pytest.approx(LR * 0.9**8)  # after the 8 steps of round 0
    assert all(probe.step_lrs[step] == final_lr for step in range(8, 16))
    assert probe.epoch_start[2]["optimizer_state"] > 0  # momentum kept
    for key, value in probe.epoch_start[2]["model"].items():
        mask = callback.masks.get(key)
        expected = probe.epoch_end[1][key] * mask if mask is not None else probe.epoch_end[1][key]
        assert torch.equal(value, expected), key
    _masked_entries_are_zero(callback, model)


class MetricsLogger(Logger):
    """Keeps what the run logs (for the per-round metrics)."""

    def __init__(self) -> None:
        super().__init__()
        self.logged: list[dict[str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.logged.append(dict(metrics))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        return None


def test_round_metric_goes_to_history_and_loggers() -> None:
    logger = MetricsLogger()
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=2, epochs_per_round=1, monitor="train/loss"
    )
    trainer, _ = _fit(callback, logger=logger)
    assert trainer.current_epoch == 3
    losses = [entry["train/loss"] for entry in callback.history]
    assert len(losses) == 3 and all(loss > 0 for loss in losses)
    rounds = [m for m in logger.logged if "pruning/round_train_loss" in m]
    assert [m["pruning/round_sparsity"] for m in rounds] == [
        e["sparsity"] for e in callback.history
    ]
    assert any("pruning/sparsity" in m for m in logger.logged)


def test_max_epochs_must_fit_the_schedule() -> None:
    callback = IterativeMagnitudePruning(amount=0.5, rounds=2, epochs_per_round=1)
    trainer = pl.Trainer(max_epochs=5, callbacks=[callback], **QUIET_TRAINER)
    with pytest.raises(TrickConfigurationError, match="max_epochs=3"):
        trainer.fit(TinyConvNet(), tiny_loader())


class _CountSteps(Callback):
    steps = 0

    def on_train_batch_end(self, *args: Any) -> None:
        self.steps += 1


@pytest.mark.parametrize("pruner", [IterativeMagnitudePruning, AcceleratedIMP])
@pytest.mark.parametrize(
    ("max_steps", "reached"),
    [
        (4, "round 0 of 2, at sparsity 0.0000"),
        (5, "round 1 of 2, at sparsity 0.5000"),
        (11, "round 2 of 2, at sparsity 0.7500"),
    ],
)
def test_max_steps_shorter_than_the_schedule_is_warned_with_the_round_reached(
    pruner: type, max_steps: int, reached: str
) -> None:
    extra = {"accelerated_epochs": 1} if pruner is AcceleratedIMP else {}
    callback = pruner(amount=0.5, rounds=2, epochs_per_round=1, verbose=False, **extra)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[callback], **QUIET_TRAINER)
    with pytest.warns(TrickWarning, match=f"max_steps={max_steps}.*take 12 steps.*{reached}"):
        trainer.fit(TinyConvNet(), tiny_loader())
    assert callback.history[-1]["sparsity"] == pytest.approx(float(reached[-6:]), abs=0.01)


def test_max_steps_long_enough_runs_the_whole_schedule() -> None:
    callback = IterativeMagnitudePruning(amount=0.5, rounds=2, epochs_per_round=1, verbose=False)
    trainer = pl.Trainer(max_steps=100, callbacks=[callback], **QUIET_TRAINER)
    trainer.fit(TinyConvNet(), tiny_loader())
    assert trainer.global_step == 12  # the schedule stopped the run
    assert callback.history[-1]["sparsity"] == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        ({"export_submodule": "backbone"}, "export_submodule='backbone' is not a sub-module"),
        ({"export_path": "."}, "is a directory"),
        ({"export_path": "{tmp}/a_file/pruned.pt"}, "cannot be written"),
    ],
)
def test_bad_export_is_refused_at_setup(
    arguments: dict[str, Any], match: str, tmp_path: Path
) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    arguments = {k: v.format(tmp=tmp_path) for k, v in arguments.items()}
    callback = IterativeMagnitudePruning(amount=0.5, rounds=1, epochs_per_round=1, **arguments)
    counter = _CountSteps()
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback, counter], **QUIET_TRAINER)
    with pytest.raises(TrickConfigurationError, match=match):
        trainer.fit(TinyConvNet(), tiny_loader())
    assert counter.steps == 0


def test_rewind_step_outside_round_zero_is_refused_before_training() -> None:
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=1, epochs_per_round=1, rewind="weights", rewind_step=4
    )
    with pytest.raises(TrickConfigurationError, match="rewind_step=4"):
        _fit(callback)


def test_resume_mid_round_is_bit_identical_with_the_same_masks(tmp_path: Path) -> None:
    def build() -> AcceleratedIMP:
        return AcceleratedIMP(
            amount=0.4,
            rounds=2,
            epochs_per_round=3,
            accelerated_epochs=2,
            stability_threshold=0.5,
            rewind="weights",
            rewind_epoch=1,
        )

    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=10, save_top_k=-1)
    reference = build()
    _, full = _fit(reference, checkpoints, enable_checkpointing=True)
    resumed_callback = build()
    checkpoint = next(tmp_path.glob("*step=10.ckpt"))  # epoch 2: round 1, after a pruning
    assert torch.load(checkpoint, weights_only=False)["global_step"] == 10
    _, resumed = _fit(resumed_callback, ckpt_path=str(checkpoint))
    assert reference.history == resumed_callback.history
    assert reference.history[1]["sparsity"] == pytest.approx(0.4, abs=0.01)
    for name, mask in reference.masks.items():
        assert torch.equal(mask, resumed_callback.masks[name])
    for key, value in full.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key


def test_export_loads_into_a_fresh_model_without_the_library(tmp_path: Path) -> None:
    path = tmp_path / "pruned.pt"
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=2, epochs_per_round=1, export_path=str(path)
    )
    _, model = _fit(callback)
    state = torch.load(path)  # plain tensors only (weights_only loading)
    fresh = TinyConvNet()
    fresh.load_state_dict(state)
    fresh.eval()
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)
    assert float((state["head.weight"] == 0).float().mean()) > 0.7


def test_a_relative_export_goes_under_the_log_directory_and_is_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from lightning.pytorch.loggers import CSVLogger

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def build(export_path: str) -> IterativeMagnitudePruning:
        return IterativeMagnitudePruning(
            amount=0.5, rounds=1, epochs_per_round=1, export_path=export_path, verbose=False
        )

    with caplog.at_level(logging.INFO):
        trainer, _ = _fit(build("pruned.pt"), logger=CSVLogger(tmp_path / "logs"))
    written = tmp_path / "logs" / "lightning_logs" / "version_0" / "pruned.pt"
    assert Path(trainer.log_dir) / "pruned.pt" == written and written.is_file()
    assert not list(cwd.iterdir())  # nothing in the directory the run started from
    assert f"written to {written}." in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        trainer, _ = _fit(build("pruned.pt"), logger=CSVLogger(tmp_path / "logs"))
    assert (tmp_path / "logs" / "lightning_logs" / "version_1" / "pruned.pt").is_file()
    assert "replaced" not in caplog.text  # a second run writes its own file
    with caplog.at_level(logging.INFO):
        _fit(build(str(written)))  # an absolute path is used as it is, and a replacement said
    assert f"written to {written} (it replaced an existing file)." in caplog.text


def test_exported_timm_backbone_loads_into_a_fresh_timm_model(tmp_path: Path) -> None:
    import timm

    from lightning_dnn_tricks.models import TimmClassifier

    path, name = tmp_path / "backbone.pt", "mobilenetv3_small_050"
    callback = IterativeMagnitudePruning(
        amount=0.5, rounds=1, epochs_per_round=1, export_path=str(path), export_submodule="model"
    )
    pl.seed_everything(0)
    module = TimmClassifier(name, num_classes=3, in_chans=1)
    trainer = pl.Trainer(max_epochs=2, callbacks=[callback], limit_train_batches=2, **QUIET_TRAINER)
    trainer.fit(module, tiny_loader())
    fresh = timm.create_model(name, num_classes=3, in_chans=1)
    fresh.load_state_dict(torch.load(path, weights_only=True))  # plain tensors only
    fresh.eval()
    module.eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(fresh(x), module(x), rtol=0, atol=0)
    pruned = [p for p in fresh.parameters() if p.dim() >= 2]
    zeros = sum(int((p == 0).sum()) for p in pruned) / sum(p.numel() for p in pruned)
    assert zeros == pytest.approx(0.5, abs=0.01)


def test_aimp_shortens_intermediate_rounds_and_its_adaptive_stop_ends_early() -> None:
    fixed = AcceleratedIMP(amount=0.5, rounds=2, epochs_per_round=4, accelerated_epochs=0.25)
    assert fixed.total_epochs == 1 + 1 + 4
    _fit(fixed)
    assert [entry["epochs"] for entry in fixed.history] == [1, 1, 4]
    adaptive = AcceleratedIMP(
        amount=0.5, rounds=2, epochs_per_round=4, accelerated_epochs=3, stability_threshold=0.01
    )
    trainer, _ = _fit(adaptive)
    assert [entry["epochs"] for entry in adaptive.history] == [2, 2, 4]
    assert adaptive.jaccard is not None and adaptive.jaccard >= 0.01
    assert trainer.current_epoch == 8 < adaptive.total_epochs == 10
