"""The composition suite: every pair of registered tricks, and each trick with each of Lightning's
callbacks that touch weights, loss or loop, is refused at setup (its message names both) or trains
with both effects checked. Pairs come from ``composition.composition_pairs()``: a new trick without
a builder and an effect check here fails ``test_every_party_has_a_builder_and_an_effect``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from composition_model import OPTIMIZERS, CompositionModel, loader, sgd, trick_callbacks
from ldt_testing import QUIET_TRAINER
from lightning.pytorch import callbacks as lc

from lightning_dnn_tricks import TrickConfigurationError
from lightning_dnn_tricks.callbacks import AdaptiveImportanceSampling, NormLoss
from lightning_dnn_tricks.callbacks._lightning import averaged_module
from lightning_dnn_tricks.composition import Party, composition_pairs, conflict
from lightning_dnn_tricks.nn.bnsr import BNSR_CLASSES
from lightning_dnn_tricks.nn.weight_align import is_weight_aligned

EPOCHS = 3


def _builtin(name: str, tmp_path: Path) -> list[pl.Callback]:
    builders: dict[str, Callable[[], pl.Callback]] = {
        "EMAWeightAveraging": lambda: lc.EMAWeightAveraging(decay=0.5),
        "StochasticWeightAveraging": lambda: lc.StochasticWeightAveraging(
            swa_lrs=0.01, swa_epoch_start=1
        ),
        "ModelPruning": lambda: lc.ModelPruning("l1_unstructured", amount=0.5, verbose=0),
        "BackboneFinetuning": lambda: lc.BackboneFinetuning(unfreeze_backbone_at_epoch=1),
        "GradientAccumulationScheduler": lambda: lc.GradientAccumulationScheduler({1: 2}),
        "EarlyStopping": lambda: lc.EarlyStopping(
            monitor="train/loss", patience=100, check_on_train_epoch_end=True
        ),
        "ModelCheckpoint": lambda: lc.ModelCheckpoint(
            dirpath=tmp_path, every_n_train_steps=4, save_top_k=-1
        ),
    }
    callback = builders[name]()
    if isinstance(callback, lc.StochasticWeightAveraging):
        return [callback, _TransferProbe(callback)]
    return [callback]


class _TransferProbe(pl.Callback):
    """Records how far the model is from SWA's average right after SWA copied it in.

    SWA transfers its average at the start of its extra BatchNorm epoch; Lightning then takes
    one more optimizer step in that epoch (with the last gradient), so the finished model is
    not the average: the transfer itself is what is checked.
    """

    def __init__(self, swa: lc.StochasticWeightAveraging) -> None:
        self.swa = swa
        self.gap: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        average = averaged_module(self.swa)
        if average is not None and trainer.current_epoch == self.swa.swa_end + 1:
            pairs = zip(pl_module.parameters(), average.parameters(), strict=True)
            self.gap = max(float((p - q.to(p.device)).abs().max()) for p, q in pairs)


def _weights(model: CompositionModel) -> list[torch.Tensor]:
    conv = model.backbone[0]
    raw = conv.parametrizations.weight.original if is_weight_aligned(conv) else conv.weight
    return [raw.detach(), model.head.weight.detach()]


def _check_effect(name: str, trainer: pl.Trainer, model: CompositionModel, second: bool) -> None:
    """Assert that the party ``name`` had its effect in the finished run."""
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    metrics = trainer.callback_metrics
    if name in ("iterative_pruning", "accelerated_pruning"):
        zeros = torch.cat([(w == 0).flatten() for w in _weights(model)]).float().mean()
        assert zeros >= 0.70, f"sparsity {float(zeros):.2f} after 2 rounds of 0.5"
    elif name == "norm_loss":
        for cb in (c for c in callbacks if isinstance(c, NormLoss)):
            assert cb._weights, "NormLoss regularised nothing"
        assert torch.isfinite(metrics["norm_loss/mean_abs_deviation"])
    elif name == "weight_align":
        assert is_weight_aligned(model.head if second else model.backbone[0])
        assert "weight_align/mean_gain" in metrics
    elif name == "bnsr":
        assert isinstance(model.backbone[4 if second else 1], BNSR_CLASSES)
        assert "bnsr/mean_exponent" in metrics
    elif name == "weight_norm_supervision":
        weight = model.head.weight if second else model.backbone[0].weight
        exact = torch.linalg.matrix_norm(weight.detach().flatten(1), ord=2)
        assert exact <= 0.5 * 1.05 or not second  # conv: operator norm, checked by the WNS tests
        assert any(key.startswith("wns/") for key in metrics)
    elif name == "importance_sampling":
        cb = next(c for c in callbacks if isinstance(c, AdaptiveImportanceSampling))
        assert cb.scores is not None and not torch.all(cb.scores == cb.initial_score)
    elif name == "sgdg2":
        assert trainer.optimizers[0].param_groups[0]["lr"] != 0.02
    elif name == "frank_wolfe":
        fw = trainer.optimizers[0]
        assert fw.swapped or not fw.mid_trajectory(), "the weights hold a trajectory point"
    elif name == "StochasticWeightAveraging":
        cb = next(c for c in callbacks if isinstance(c, lc.StochasticWeightAveraging))
        probe = next(c for c in callbacks if isinstance(c, _TransferProbe))
        assert cb.n_averaged is not None and int(cb.n_averaged) >= 2, "SWA averaged < 2 points"
        assert probe.gap is not None and probe.gap < 1e-6, f"not the average: {probe.gap}"
    elif name == "EMAWeightAveraging":
        cb = next(c for c in callbacks if type(c).__name__ == name)
        average = averaged_module(cb)
        assert average is not None
        for (key, p), q in zip(model.named_parameters(), average.parameters(), strict=True):
            assert torch.allclose(p, q.to(p.device)), f"{key} is not the average"
    elif name == "ModelPruning":
        assert float((model.head.weight == 0).float().mean()) >= 0.4
    elif name == "BackboneFinetuning":
        assert all(p.requires_grad for p in model.backbone.parameters())
    elif name == "GradientAccumulationScheduler":
        assert trainer.accumulate_grad_batches == 2
    elif name == "EarlyStopping":
        cb = next(c for c in callbacks if isinstance(c, lc.EarlyStopping))
        assert torch.isfinite(cb.best_score)
    elif name == "ModelCheckpoint":
        cb = next(c for c in callbacks if isinstance(c, lc.ModelCheckpoint))
        saved = sorted(Path(cb.dirpath).glob("*.ckpt"))
        assert saved, "no checkpoint written"
        states = torch.load(saved[-1], weights_only=False)["callbacks"]
        for trick in callbacks:
            if hasattr(trick, "spec") and trick.state_dict():
                assert trick.state_key in states
    else:  # pragma: no cover - a new party needs its check here
        raise AssertionError(f"no effect check for {name!r}")


PAIRS = composition_pairs()


def _pair_id(pair: tuple[Party, Party]) -> str:
    return f"{pair[0].name}+{pair[1].name}"


def test_every_party_has_a_builder_and_an_effect(tmp_path: Path) -> None:
    names = {party.name for pair in PAIRS for party in pair}
    tricks = {name for name in names if name[0].islower()}
    for name in tricks:
        trick_callbacks(name, second=False)
    for name in names - tricks:
        _builtin(name, tmp_path)
    assert len(PAIRS) == len(tricks) * (len(tricks) + 1) // 2 + len(tricks) * len(names - tricks)


@pytest.mark.slow
@pytest.mark.parametrize("pair", PAIRS, ids=_pair_id)
def test_pair_is_refused_or_has_both_effects(pair: tuple[Party, Party], tmp_path: Path) -> None:
    first, second = pair
    same = first.name == second.name
    optimizer_names = [p.name for p in pair if p.name in OPTIMIZERS]
    callbacks = trick_callbacks(first.name, second=False)
    if second.name[0].islower():
        callbacks += trick_callbacks(second.name, second=same)
    else:
        callbacks += _builtin(second.name, tmp_path)
    pl.seed_everything(0)
    model = CompositionModel(OPTIMIZERS[optimizer_names[0]] if optimizer_names else sgd)
    refusal = conflict(first, second)
    settings = {**QUIET_TRAINER, "enable_checkpointing": True}
    if refusal is not None:
        if len(optimizer_names) == 2:  # one module configures one optimizer: nothing to refuse
            assert "optimizer" in first.effects and "optimizer" in second.effects
            return
        # Two identical instances: Lightning itself refuses them (one state key) when the
        # Trainer is built; every other refusal is ours, at setup, naming both.
        refusals = (TrickConfigurationError, RuntimeError) if same else TrickConfigurationError
        with pytest.raises(refusals) as raised:
            pl.Trainer(max_epochs=EPOCHS, callbacks=callbacks, **settings).fit(model, loader())
        message = str(raised.value)
        names = [type(callbacks[0]).__name__] if isinstance(raised.value, RuntimeError) else []
        assert all(n in message for n in names or [first.name, second.name]), message
        return
    trainer = pl.Trainer(max_epochs=EPOCHS, callbacks=callbacks, **settings)
    trainer.fit(model, loader())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    _check_effect(first.name, trainer, model, second=False)
    _check_effect(second.name, trainer, model, second=same)
