"""Tests of the offline, seeded example datamodules and their epoch-seeded sampler."""

from __future__ import annotations

import random
import re
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning_utilities.core.imports import module_available, package_available
from torch.utils.data import RandomSampler, SequentialSampler

from lightning_dnn_tricks.data import (
    AddingProblemDataModule,
    CopyMemoryDataModule,
    DigitsDataModule,
    EpochSeededRandomSampler,
    InMemoryDataModule,
    MNIST1DDataModule,
    require,
)

Factory = Callable[..., InMemoryDataModule]

SMALL: dict[str, tuple[Factory, dict[str, Any]]] = {
    "digits": (DigitsDataModule, {}),
    "digits32rgb": (DigitsDataModule, {"image_size": 32, "channels": 3}),
    "mnist1d": (MNIST1DDataModule, {"num_samples": 200}),
    "mnist1d_seq": (MNIST1DDataModule, {"num_samples": 200, "as_sequence": True}),
    "adding": (AddingProblemDataModule, {"seq_len": 20, "num_train": 64, "num_val": 16}),
    "copy": (
        CopyMemoryDataModule,
        {"delay": 5, "copy_length": 3, "num_symbols": 4, "num_train": 64, "num_val": 16},
    ),
}


def make(name: str, **overrides: Any) -> InMemoryDataModule:
    factory, kwargs = SMALL[name]
    synthetic = factory in (AddingProblemDataModule, CopyMemoryDataModule)
    sizes = {"num_test": 8} if synthetic else {}
    return factory(**{"batch_size": 16, **sizes, **kwargs, **overrides})


def build(name: str, **overrides: Any) -> InMemoryDataModule:
    dm = make(name, **overrides)
    dm.setup()
    return dm


def all_tensors(dm: InMemoryDataModule) -> list[torch.Tensor]:
    return [tensor for split in dm.splits for tensor in split.tensors]


# --- shapes, dtypes, lengths -------------------------------------------------------------------

EXPECTED = {
    # name: (split lengths, x dtype, y dtype, y shape per example, num_classes)
    "digits": ((1259, 269, 269), torch.float32, torch.int64, (), 10),
    "digits32rgb": ((1259, 269, 269), torch.float32, torch.int64, (), 10),
    "mnist1d": ((142, 18, 40), torch.float32, torch.int64, (), 10),
    "mnist1d_seq": ((142, 18, 40), torch.float32, torch.int64, (), 10),
    "adding": ((64, 16, 8), torch.float32, torch.float32, (1,), None),
    "copy": ((64, 16, 8), torch.float32, torch.int64, (11,), 5),
}
INPUT_SHAPES = {
    "digits": (1, 8, 8),
    "digits32rgb": (3, 32, 32),
    "mnist1d": (1, 40),
    "mnist1d_seq": (40, 1),
    "adding": (20, 2),
    "copy": (11, 6),
}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_splits_shapes_dtypes_and_batches(name: str) -> None:
    dm = build(name)
    lengths, x_dtype, y_dtype, y_shape, num_classes = EXPECTED[name]
    assert dm.input_shape == INPUT_SHAPES[name]
    assert dm.num_classes == num_classes
    assert tuple(len(split) for split in dm.splits) == lengths  # digits: 70/15/15 per class
    for split in dm.splits:
        x, y = split.tensors
        assert x.dtype == x_dtype and y.dtype == y_dtype
        assert tuple(x.shape[1:]) == dm.input_shape and tuple(y.shape[1:]) == y_shape
        assert torch.isfinite(x).all()
    x, y = next(iter(dm.train_dataloader()))
    assert tuple(x.shape) == (16, *dm.input_shape) and tuple(y.shape) == (16, *y_shape)


def test_sequence_metadata() -> None:
    adding = AddingProblemDataModule(seq_len=20)
    assert (adding.input_size, adding.seq_len, adding.output_size) == (2, 20, 1)
    copy = CopyMemoryDataModule(delay=5, copy_length=3, num_symbols=4)
    assert (copy.input_size, copy.seq_len, copy.num_classes) == (6, 5 + 2 * 3, 5)
    mnist = MNIST1DDataModule(as_sequence=True)
    assert (mnist.input_size, mnist.seq_len, mnist.input_shape) == (1, 40, (40, 1))


# --- determinism --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["digits", "mnist1d", "adding", "copy"])
def test_same_seed_same_data_other_seed_other_data(name: str) -> None:
    first, again, other = build(name, seed=3), build(name, seed=3), build(name, seed=4)
    for a, b in zip(all_tensors(first), all_tensors(again), strict=True):
        assert torch.equal(a, b)
    assert not all(
        a.shape == c.shape and torch.equal(a, c)
        for a, c in zip(all_tensors(first), all_tensors(other), strict=True)
    )


def test_sequence_splits_do_not_depend_on_other_split_sizes() -> None:
    base, larger = build("adding"), build("adding", num_train=100)
    assert torch.equal(base.splits.val.tensors[0], larger.splits.val.tensors[0])
    assert torch.equal(base.splits.test.tensors[1], larger.splits.test.tensors[1])


def test_setup_is_idempotent() -> None:
    dm = build("adding")
    splits = dm.splits
    dm.setup("fit")
    dm.setup("test")
    assert dm.splits is splits


# --- digits -------------------------------------------------------------------------------------


def test_digits_resize_normalisation_and_channel_repeat() -> None:
    native, large = DigitsDataModule(), DigitsDataModule(image_size=32, channels=3)
    assert native.mean is None  # known after setup
    x8, x32 = native.splits.train.tensors[0], large.splits.train.tensors[0]
    assert native.mean is not None and native.std is not None
    assert large.mean is not None and large.std is not None
    assert abs(float(x8.mean())) < 1e-4 and abs(float(x8.std()) - 1) < 1e-3
    raw8 = x8 * native.std + native.mean
    assert torch.allclose(raw8, raw8.round(), atol=1e-4)  # the original 0..16 pixel counts
    assert raw8.min() >= -1e-4 and raw8.max() <= 16 + 1e-4
    assert torch.equal(x32[:, 0], x32[:, 1]) and torch.equal(x32[:, 0], x32[:, 2])
    assert torch.equal(native.splits.train.tensors[1], large.splits.train.tensors[1])
    expected = F.interpolate(raw8, size=(32, 32), mode="bilinear", align_corners=False)
    assert torch.allclose(x32[:, :1] * large.std + large.mean, expected, atol=1e-4)


def test_digits_split_is_stratified_and_disjoint() -> None:
    dm = build("digits")
    images = torch.cat([split.tensors[0] for split in dm.splits]).flatten(1)
    assert len(torch.unique(images, dim=0)) >= 1797 - 30  # a few digits are exact duplicates
    for split in dm.splits:
        counts = torch.bincount(split.tensors[1], minlength=10).float()
        shares = counts / counts.sum()
        assert (shares - 0.1).abs().max() < 0.02


# --- MNIST-1D -----------------------------------------------------------------------------------


def test_mnist1d_is_generated_offline_and_keeps_global_rng(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def no_network(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("MNIST1DDataModule tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr("mnist1d.data.requests.get", no_network)
    monkeypatch.chdir(tmp_path)
    random.seed(7)
    np.random.seed(7)
    expected = (random.random(), np.random.rand())
    random.seed(7)
    np.random.seed(7)
    dm = build("mnist1d_seq")
    assert (random.random(), np.random.rand()) == expected
    assert list(tmp_path.iterdir()) == []  # no cached pickle written
    flat, sequence = build("mnist1d"), dm
    assert torch.equal(flat.splits.train.tensors[0][:, 0], sequence.splits.train.tensors[0][..., 0])


# --- synthetic sequence tasks -------------------------------------------------------------------


def test_adding_problem_markers_and_targets() -> None:
    dm = build("adding", seq_len=9)
    for split in dm.splits:
        x, y = split.tensors
        values, markers = x[..., 0], x[..., 1]
        assert ((values >= 0) & (values < 1)).all()
        assert ((markers == 0) | (markers == 1)).all()
        assert (markers[:, :4].sum(1) == 1).all() and (markers[:, 4:].sum(1) == 1).all()
        assert torch.allclose(y[:, 0], (values * markers).sum(1))


def test_copy_memory_inputs_and_targets_agree() -> None:
    delay, length, symbols = 5, 3, 4
    dm = build("copy")
    for split in dm.splits:
        x, y = split.tensors
        assert torch.equal(x.sum(-1), torch.ones(x.shape[:2]))  # one-hot
        tokens = x.argmax(-1)
        assert ((tokens[:, :length] >= 1) & (tokens[:, :length] <= symbols)).all()
        delimiter = length + delay - 1
        assert (tokens[:, delimiter] == symbols + 1).all()
        rest = torch.cat([tokens[:, length:delimiter], tokens[:, delimiter + 1 :]], 1)
        assert (rest == 0).all()
        assert torch.equal(y[:, -length:], tokens[:, :length])
        assert (y[:, :-length] == 0).all()


# --- loaders and sampler ------------------------------------------------------------------------


def test_loaders_shuffle_train_only_and_keep_global_rng() -> None:
    dm = make("adding", num_workers=2, drop_last=True, batch_size=24)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train.sampler, EpochSeededRandomSampler) and train.drop_last
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last
    assert train.persistent_workers and train.num_workers == 2
    serial = make("adding")
    assert not serial.train_dataloader().persistent_workers
    state = torch.get_rng_state()
    for loader in (serial.train_dataloader(), serial.val_dataloader(), serial.test_dataloader()):
        list(loader)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(list(serial.val_dataloader())) == 1  # 16 examples, unshuffled, one batch


def test_drop_last_with_batch_larger_than_train_split_raises() -> None:
    dm = make("adding", batch_size=65, drop_last=True)
    with pytest.raises(ValueError, match="`batch_size`"):
        dm.setup()


def test_too_small_fraction_names_the_argument() -> None:
    with pytest.raises(ValueError, match="`val_fraction`"):
        DigitsDataModule(val_fraction=0.001).setup()


def test_sampler_order_depends_only_on_seed_and_epoch() -> None:
    data = range(50)
    sampler = EpochSeededRandomSampler(data, seed=5)
    assert isinstance(sampler, RandomSampler)
    torch.manual_seed(0)
    epoch0 = list(sampler)
    torch.manual_seed(1)
    assert list(sampler) == epoch0 and sorted(epoch0) == list(data)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch1 != epoch0 and sorted(epoch1) == list(data)
    assert list(EpochSeededRandomSampler(data, seed=5, epoch=1)) == epoch1
    assert list(EpochSeededRandomSampler(data, seed=6)) != epoch0
    assert list(EpochSeededRandomSampler(data, seed=1, epoch=5)) != epoch0  # not seed + epoch
    restored = EpochSeededRandomSampler(data)
    restored.load_state_dict(sampler.state_dict())
    assert restored.state_dict() == {"seed": 5, "epoch": 1} and list(restored) == epoch1
    with pytest.raises(ValueError, match="`epoch`"):
        sampler.set_epoch(-1)


class _Recorder(pl.LightningModule):
    """Linear regression on the adding problem that records the first value of every batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(8, 1)
        self.seen: dict[int, list[float]] = {}

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        self.seen.setdefault(self.current_epoch, []).append(float(x[0, 0, 0]))
        return F.mse_loss(self.layer(x.flatten(1)), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None) -> _Recorder:
    model = _Recorder()
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_top_k=-1)],
    )
    dm = AddingProblemDataModule(seq_len=4, num_train=40, num_val=8, num_test=8, batch_size=8)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model


def test_resume_at_epoch_boundary_replays_the_same_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    full = _fit(tmp_path / "full", max_epochs=3)
    assert full.seen[0] != full.seen[1]
    checkpoint = next((tmp_path / "full").glob("epoch=0-*.ckpt"))
    torch.manual_seed(123)  # the order must not depend on the global state
    resumed = _fit(tmp_path / "resumed", max_epochs=3, ckpt_path=str(checkpoint))
    assert sorted(resumed.seen) == [1, 2]
    assert resumed.seen[1] == full.seen[1] and resumed.seen[2] == full.seen[2]


# --- bad arguments and missing dependencies -----------------------------------------------------

BAD_ARGUMENTS = [
    (DigitsDataModule, {"batch_size": 0}, "batch_size"),
    (DigitsDataModule, {"batch_size": 2.5}, "batch_size"),
    (DigitsDataModule, {"image_size": 7}, "image_size"),
    (DigitsDataModule, {"channels": 2}, "channels"),
    (DigitsDataModule, {"channels": True}, "channels"),
    (DigitsDataModule, {"val_fraction": 0.0}, "val_fraction"),
    (DigitsDataModule, {"test_fraction": 1.0}, "test_fraction"),
    (DigitsDataModule, {"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction"),
    (DigitsDataModule, {"seed": -1}, "seed"),
    (DigitsDataModule, {"seed": 2**32}, "seed"),
    (DigitsDataModule, {"num_workers": -1}, "num_workers"),
    (MNIST1DDataModule, {"num_samples": 50}, "num_samples"),
    (MNIST1DDataModule, {"num_samples": 205}, "num_samples"),
    (MNIST1DDataModule, {"val_fraction": 1.5}, "val_fraction"),
    (AddingProblemDataModule, {"seq_len": 1}, "seq_len"),
    (AddingProblemDataModule, {"num_train": 0}, "num_train"),
    (AddingProblemDataModule, {"num_val": 0}, "num_val"),
    (AddingProblemDataModule, {"num_test": 1.0}, "num_test"),
    (CopyMemoryDataModule, {"delay": 0}, "delay"),
    (CopyMemoryDataModule, {"copy_length": 0}, "copy_length"),
    (CopyMemoryDataModule, {"num_symbols": 0}, "num_symbols"),
    (CopyMemoryDataModule, {"batch_size": None}, "batch_size"),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "argument"),
    BAD_ARGUMENTS,
    ids=[f"{factory.__name__}-{argument}-{kwargs}" for factory, kwargs, argument in BAD_ARGUMENTS],
)
def test_bad_arguments_raise_naming_the_argument(
    factory: Factory, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(f"`{argument}`")):
        factory(**kwargs)


NOT_A_BOOL = [
    (DigitsDataModule, {"drop_last": 1}, "drop_last"),
    (AddingProblemDataModule, {"drop_last": "false"}, "drop_last"),
    (MNIST1DDataModule, {"as_sequence": "yes"}, "as_sequence"),
    (MNIST1DDataModule, {"as_sequence": 0}, "as_sequence"),
]


@pytest.mark.parametrize(
    ("factory", "kwargs", "argument"),
    NOT_A_BOOL,
    ids=[f"{factory.__name__}-{argument}-{kwargs}" for factory, kwargs, argument in NOT_A_BOOL],
)
def test_a_flag_that_is_not_a_bool_raises_type_error_naming_it(
    factory: Factory, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(TypeError, match=re.escape(f"`{argument}` must be True or False")):
        factory(**kwargs)


def test_sampler_bad_arguments() -> None:
    with pytest.raises(ValueError, match="`seed`"):
        EpochSeededRandomSampler(range(3), seed=-1)
    with pytest.raises(ValueError, match="`epoch`"):
        EpochSeededRandomSampler(range(3), epoch=0.5)  # type: ignore[arg-type]


@pytest.fixture
def fresh_import_checks(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """``monkeypatch``, with lightning_utilities' cached import checks cleared around the test.

    ``require`` asks ``RequirementCache``, whose ``module_available`` is cached per process: a
    module hidden by the test must not be answered from an earlier check, nor stay missing after.
    """
    module_available.cache_clear()
    package_available.cache_clear()
    yield monkeypatch
    module_available.cache_clear()
    package_available.cache_clear()


@pytest.mark.parametrize(
    ("factory", "modules", "package"),
    [
        (DigitsDataModule, ["sklearn", "sklearn.datasets"], "scikit-learn"),
        (MNIST1DDataModule, ["mnist1d", "mnist1d.data"], "mnist1d"),
    ],
)
def test_missing_optional_dependency_says_how_to_install(
    fresh_import_checks: pytest.MonkeyPatch, factory: Factory, modules: list[str], package: str
) -> None:
    for module in modules:
        fresh_import_checks.setitem(sys.modules, module, None)  # makes `import module` fail
    message = f"{factory.__name__} needs {package}. Install it with: pip install "
    with pytest.raises(ImportError, match=message + r'"lightning-dnn-tricks\[examples\]"'):
        factory()


def test_require_names_the_module_that_cannot_be_imported(
    fresh_import_checks: pytest.MonkeyPatch,
) -> None:
    fresh_import_checks.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ImportError, match=r"needs scikit-learn\..*\[extra\]\" \('sklearn.x'"):
        require("sklearn.x", "the test", extra="extra")
    with pytest.raises(TypeError, match="`feature`"):
        require("math", None)  # type: ignore[arg-type]


def test_require_returns_the_module() -> None:
    assert require("math", "test").sqrt(4.0) == 2.0
