"""The AdaptiveImportanceSampling callback inside a real Trainer."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from ldt_testing import QUIET_TRAINER
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

from lightning_dnn_tricks import TrickConfigurationError
from lightning_dnn_tricks.callbacks import AdaptiveImportanceSampling
from lightning_dnn_tricks.callbacks.importance_sampling import add_note
from lightning_dnn_tricks.data import (
    AdaptiveImportanceSampler,
    EpochSeededRandomSampler,
    IndexedDataset,
    importance_dataloader,
)
from lightning_dnn_tricks.functional import importance_weighted_mean

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.2),
    "momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
    "adam": lambda p: torch.optim.Adam(p, lr=0.01),
}


class TinyClassifier(pl.LightningModule):
    """An MLP on 6 features, 3 classes; ``mode`` says how the loss treats the weights."""

    def __init__(self, optimizer: str = "sgd", mode: str = "weighted") -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        self.optimizer, self.mode = optimizer, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        x, y = batch["example"]
        logits = self.net(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        if self.mode == "ignores_weights":
            loss = losses.mean()
        elif self.mode == "no_logits":
            loss = importance_weighted_mean(losses, batch)
        else:
            loss = importance_weighted_mean(losses, batch, logits=logits, targets=y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return OPTIMIZERS[self.optimizer](self.parameters())


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    return TensorDataset(x, y)


def _fit(
    callback: AdaptiveImportanceSampling,
    module: pl.LightningModule | None = None,
    loader: DataLoader[Any] | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    pl.seed_everything(0)
    module = module or TinyClassifier()
    loader = loader or DataLoader(_data(), batch_size=16, shuffle=True)
    options = {**QUIET_TRAINER, "max_epochs": 2, **trainer_kwargs}
    extra = options.pop("callbacks", [])
    ckpt_path = options.pop("ckpt_path", None)
    trainer = pl.Trainer(callbacks=[callback, *extra], **options)
    trainer.fit(module, loader, ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_trains_with_sgd_momentum_and_adam(optimizer: str) -> None:
    callback = AdaptiveImportanceSampling()
    module = TinyClassifier(optimizer)
    pl.seed_everything(0)
    x, y = _data().tensors
    before = F.cross_entropy(module.net(x), y).item()
    trainer = _fit(callback, module, max_epochs=4, log_every_n_steps=1)
    after = F.cross_entropy(module.net(x), y).item()
    assert after < 0.8 * before
    assert callback.scores is not None and not torch.equal(callback.scores, torch.ones(96))
    p = callback.sampler.probabilities  # type: ignore[union-attr]
    assert p.min() >= 0.3 / 96 - 1e-12 and p.max() > 1.5 * p.min()  # refreshed: not uniform
    ess = trainer.callback_metrics["importance/ess"].item()
    assert 0.3 < ess < 1.0
    assert trainer.callback_metrics["importance/max_weight"].item() <= 1 / 0.3 + 1e-6


def test_plain_loader_is_rebuilt_around_the_sampler() -> None:
    callback = AdaptiveImportanceSampling(refresh_every=3)
    trainer = _fit(callback, max_epochs=1)
    loader = trainer.train_dataloader
    assert isinstance(loader.sampler, AdaptiveImportanceSampler)  # type: ignore[union-attr]
    assert loader.sampler is callback.sampler  # type: ignore[union-attr]
    assert len(loader) == 6 and trainer.global_step == 6  # type: ignore[arg-type]


def test_explicit_importance_loader_is_used_as_is() -> None:
    loader = importance_dataloader(_data(), batch_size=16, seed=5)
    callback = AdaptiveImportanceSampling()
    trainer = _fit(callback, loader=loader, max_epochs=1)
    assert trainer.train_dataloader is loader and callback.sampler is loader.sampler


def test_module_that_ignores_the_weights_fails_at_the_first_step() -> None:
    with pytest.raises(TrickConfigurationError, match="did not apply the importance weights"):
        _fit(AdaptiveImportanceSampling(), TinyClassifier(mode="ignores_weights"))


def test_logit_grad_without_logits_fails_and_loss_score_works() -> None:
    with pytest.raises(TrickConfigurationError, match="score='logit_grad' needs the logits"):
        _fit(AdaptiveImportanceSampling(), TinyClassifier(mode="no_logits"))
    callback = AdaptiveImportanceSampling(score="loss", refresh_every=2)
    _fit(callback, TinyClassifier(mode="no_logits"), max_epochs=1)
    assert callback.scores is not None and callback.scores.max() < 3.0


def test_grad_norm_score_is_the_exact_per_example_gradient_norm() -> None:
    callback = AdaptiveImportanceSampling(score="grad_norm", refresh_every=1)
    module = TinyClassifier()
    _fit(callback, module, max_epochs=1, max_steps=1)
    assert callback._grad_norms is not None and (callback._grad_norms > 0).all()


def test_batches_unwrapped_before_the_step_are_refused() -> None:
    class Unwrapping(TinyClassifier):
        def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            return batch["example"]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(self.net(x), y)

    with pytest.raises(TrickConfigurationError, match="not an importance batch"):
        _fit(AdaptiveImportanceSampling(), Unwrapping(), max_steps=1)


def test_resume_across_an_epoch_refresh_is_bit_exact(tmp_path: Path) -> None:
    """Per-epoch refresh, crash in the middle of epoch 1: the same weights and scores."""

    def run(ckpt_path: str | None = None, **kwargs: Any) -> tuple[pl.Trainer, Any]:
        callback = AdaptiveImportanceSampling()
        trainer = _fit(
            callback,
            max_epochs=3,
            deterministic=True,
            ckpt_path=ckpt_path,
            log_every_n_steps=1,
            **kwargs,
        )
        return trainer, callback

    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=8, save_top_k=-1)
    full, full_callback = run(callbacks=[checkpoints], enable_checkpointing=True)
    resumed, resumed_callback = run(ckpt_path=str(next(tmp_path.glob("*step=8.ckpt"))))
    assert resumed.global_step == full.global_step == 18
    for key, value in resumed.lightning_module.state_dict().items():
        assert torch.equal(value, full.lightning_module.state_dict()[key]), key
    assert torch.equal(resumed_callback.scores, full_callback.scores)
    assert torch.equal(resumed_callback.sampler.probabilities, full_callback.sampler.probabilities)


# ---------------------------------------------------------------- issue 12: meet the user
class PlainClassifier(TinyClassifier):
    """A module written without importance sampling in mind (Lightning's BoringModel style)."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self.net(x), y)


def _text(error: BaseException) -> str:
    return "\n".join([str(error), *getattr(error, "__notes__", [])])


def test_unchanged_module_gets_the_library_message_with_its_own_error() -> None:
    with pytest.raises(ValueError, match="too many values to unpack") as caught:
        _fit(AdaptiveImportanceSampling(), PlainClassifier(), max_steps=2)
    text = _text(caught.value)
    assert "AdaptiveImportanceSampling" in text and "PlainClassifier" in text
    assert '{"example": <the usual batch>, "index", "weight", "record"}' in text
    assert 'x, y = batch["example"]' in text and "importance_weighted_mean" in text


def test_dict_batch_module_gets_the_message_on_its_key_error() -> None:
    class DictData(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
        def __init__(self) -> None:
            self.x, self.y = _data().tensors

        def __len__(self) -> int:
            return len(self.y)

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"x": self.x[i], "y": self.y[i]}

    class DictModule(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return F.cross_entropy(self.net(batch["x"]), batch["y"])

    loader = DataLoader(DictData(), batch_size=16, shuffle=True)
    with pytest.raises(KeyError) as caught:
        _fit(AdaptiveImportanceSampling(), DictModule(), loader=loader, max_steps=1)
    assert "importance batch" in _text(caught.value)


def test_a_later_failure_gets_no_note() -> None:
    class FailsLater(TinyClassifier):
        def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
            if self.global_step == 2:
                raise ValueError("a bug of the module")
            return super().training_step(batch, batch_idx)

    with pytest.raises(ValueError, match="a bug of the module") as caught:
        _fit(AdaptiveImportanceSampling(), FailsLater())
    assert "AdaptiveImportanceSampling" not in _text(caught.value)


def test_note_fallback_without_pep_678() -> None:
    """Python 3.10: the note goes into the message of a plain exception, and to __notes__."""
    error = ValueError("too many values to unpack (expected 2)")
    add_note(error, "the library's message", notes=False)
    assert str(error).endswith("\nthe library's message")
    assert getattr(error, "__notes__", None) == ["the library's message"]
    key_error = KeyError("x")  # its text is repr(key): the note is logged and kept in __notes__
    add_note(key_error, "the library's message", notes=False)
    assert str(key_error) == "'x'"
    assert getattr(key_error, "__notes__", None) == ["the library's message"]


class EveryOther(Sampler[list[int]]):
    def __iter__(self) -> Iterator[list[int]]:
        yield from ([i, i + 2] for i in range(0, 96, 4))

    def __len__(self) -> int:
        return 24


@pytest.mark.parametrize(
    ("loader_kwargs", "named"),
    [
        ({"sampler": WeightedRandomSampler([1.0] * 96, 96)}, "sampler is WeightedRandomSampler"),
        ({"sampler": SubsetRandomSampler(range(48))}, "sampler is SubsetRandomSampler"),
        ({"batch_sampler": EveryOther()}, "batch_sampler is EveryOther"),
        (
            {
                "batch_sampler": BatchSampler(
                    WeightedRandomSampler([1.0] * 96, 96), 16, drop_last=False
                )
            },
            "sampler is WeightedRandomSampler",
        ),
        ({"sampler": type("MyShuffle", (RandomSampler,), {})(range(96))}, "sampler is MyShuffle"),
    ],
)
def test_a_sampler_of_the_users_own_is_refused_not_dropped(
    loader_kwargs: dict[str, Any], named: str
) -> None:
    batching: dict[str, Any] = {} if "batch_sampler" in loader_kwargs else {"batch_size": 16}
    loader = DataLoader(_data(), **batching, **loader_kwargs)
    with pytest.raises(TrickConfigurationError, match="AdaptiveImportanceSampling") as caught:
        _fit(AdaptiveImportanceSampling(), loader=loader, max_steps=1)
    message = str(caught.value)
    assert named in message
    assert "would not compose into an unbiased gradient" in message
    assert "Remove the sampler" in message and "importance_dataloader" in message


@pytest.mark.parametrize(
    "sampler", [None, SequentialSampler(range(96)), EpochSeededRandomSampler(range(96), seed=1)]
)
def test_plain_samplers_are_still_replaced(sampler: Sampler[int] | None) -> None:
    loader = DataLoader(_data(), batch_size=16, sampler=sampler)
    callback = AdaptiveImportanceSampling()
    trainer = _fit(callback, loader=loader, max_epochs=1)
    assert trainer.train_dataloader.sampler is callback.sampler  # type: ignore[union-attr]
    assert trainer.global_step == 6


def test_importance_batches_without_an_importance_sampler_are_refused() -> None:
    loader = DataLoader(IndexedDataset(_data()), batch_size=16, shuffle=True)
    with pytest.raises(TrickConfigurationError, match="builds importance batches but does not"):
        _fit(AdaptiveImportanceSampling(), loader=loader, max_steps=1)


def test_a_second_instance_is_refused_at_setup() -> None:
    class MySampling(AdaptiveImportanceSampling):
        pass

    with pytest.raises(TrickConfigurationError, match="2 importance sampling callbacks") as caught:
        _fit(AdaptiveImportanceSampling(), callbacks=[MySampling(theta=0.5)], max_steps=1)
    assert "AdaptiveImportanceSampling, MySampling" in str(caught.value)
    assert "Keep one AdaptiveImportanceSampling callback" in str(caught.value)
    # added after the Trainer was built (Lightning checks duplicate state keys only then)
    trainer = pl.Trainer(callbacks=[AdaptiveImportanceSampling()], **QUIET_TRAINER, max_steps=1)
    trainer.callbacks.append(AdaptiveImportanceSampling(theta=0.5))  # type: ignore[attr-defined]
    with pytest.raises(TrickConfigurationError, match="2 importance sampling callbacks"):
        trainer.fit(TinyClassifier(), DataLoader(_data(), batch_size=16))
    # two alike at construction: Lightning refuses them already (one state key)
    with pytest.raises(RuntimeError, match="more than one stateful callback"):
        pl.Trainer(callbacks=[AdaptiveImportanceSampling(), AdaptiveImportanceSampling()])


def test_metrics_follow_the_trainers_log_every_n_steps(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="log_every_n_steps"):
        AdaptiveImportanceSampling(log_every_n_steps=1)  # type: ignore[call-arg]
    logger = CSVLogger(tmp_path, name="run", version=0)
    _fit(AdaptiveImportanceSampling(refresh_every=2), logger=logger, log_every_n_steps=4)
    with open(tmp_path / "run" / "version_0" / "metrics.csv") as file:
        rows = [row for row in csv.DictReader(file) if row.get("importance/ess")]
    steps = [int(row["step"]) for row in rows]
    assert steps == [3, 7, 11]  # every 4th of the 12 steps, as Lightning logs train/loss
    assert all(0.0 < float(row["importance/ess"]) <= 1.0 for row in rows)
    assert all(1.0 <= float(row["importance/max_weight"]) <= 1 / 0.3 + 1e-6 for row in rows)
