"""FashionMNISTDataModule on tiny IDX files written here (CI does not need the Debian package)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest
import torch

from lightning_dnn_tricks.data import FashionMNISTDataModule
from lightning_dnn_tricks.data.fashion_mnist import DATA_DIR_VARIABLE, FILES

N_TRAIN, N_TEST = 200, 30


def _idx(tensor: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic (0, 0, 0x08, ndim), big-endian sizes, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, tensor.dim())
    sizes = b"".join(struct.pack(">I", size) for size in tensor.shape)
    return header + sizes + tensor.numpy().tobytes()


def _write(folder: Path, compress: bool = False) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    data = {
        "train_images": torch.randint(0, 256, (N_TRAIN, 28, 28), generator=generator),
        "train_labels": torch.arange(N_TRAIN) % 10,
        "test_images": torch.randint(0, 256, (N_TEST, 28, 28), generator=generator),
        "test_labels": torch.arange(N_TEST) % 10,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, tensor in data.items():
        encoded = _idx(tensor.to(torch.uint8))
        if compress:
            (folder / f"{FILES[key]}.gz").write_bytes(gzip.compress(encoded))
        else:
            (folder / FILES[key]).write_bytes(encoded)
    return data


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_reads_the_files_plain_or_gzipped(tmp_path: Path, compress: bool) -> None:
    data = _write(tmp_path, compress)
    dm = FashionMNISTDataModule(str(tmp_path), val_fraction=0.1, seed=0)
    train, val, test = dm.splits
    assert (len(train), len(val), len(test)) == (180, 20, N_TEST)
    assert torch.equal(test.tensors[1], data["test_labels"])
    raw_test = data["test_images"].float() / 255
    torch.testing.assert_close(test.tensors[0][:, 0] * dm.std + dm.mean, raw_test)
    assert torch.bincount(val.tensors[1]).tolist() == [2] * 10  # stratified


def test_matches_torchvisions_fashion_mnist_in_its_layout(tmp_path: Path) -> None:
    from torchvision.datasets import FashionMNIST

    _write(tmp_path / "FashionMNIST" / "raw")
    dm = FashionMNISTDataModule(str(tmp_path), val_fraction=0.1)
    reference = FashionMNIST(str(tmp_path), train=False)
    torch.testing.assert_close(
        dm.splits.test.tensors[0][:, 0] * dm.std + dm.mean, reference.data.float() / 255
    )
    assert torch.equal(dm.splits.test.tensors[1], reference.targets)


def test_data_dir_defaults_to_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write(tmp_path)
    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    assert len(FashionMNISTDataModule(val_fraction=0.1).splits.test) == N_TEST


def test_missing_files_say_both_ways_to_get_them(tmp_path: Path) -> None:
    dm = FashionMNISTDataModule(str(tmp_path))
    with pytest.raises(FileNotFoundError) as raised:
        dm.setup()
    message = str(raised.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "torchvision.datasets.FashionMNIST" in message and "download=True" in message


def test_split_and_subset_are_seeded_stratified_and_normalised(tmp_path: Path) -> None:
    _write(tmp_path)

    def train(seed: int) -> torch.Tensor:
        dm = FashionMNISTDataModule(str(tmp_path), val_fraction=0.1, train_subset=50, seed=seed)
        return dm.splits.train.tensors[0]

    assert torch.equal(train(0), train(0)) and not torch.equal(train(0), train(1))
    dm = FashionMNISTDataModule(str(tmp_path), val_fraction=0.1, train_subset=50)
    x, y = dm.splits.train.tensors
    assert len(y) == 50 and torch.bincount(y).tolist() == [5] * 10
    torch.testing.assert_close(float(x.mean()), 0.0, atol=1e-5, rtol=0)
    torch.testing.assert_close(float(x.std()), 1.0, atol=1e-4, rtol=0)


def test_padded_rgb_images_and_row_sequences(tmp_path: Path) -> None:
    _write(tmp_path)
    padded = FashionMNISTDataModule(str(tmp_path), image_size=32, channels=3, val_fraction=0.1)
    x, _ = next(iter(padded.train_dataloader()))
    assert x.shape[1:] == (3, 32, 32) and padded.input_shape == (3, 32, 32)
    background = -padded.mean / padded.std  # a zero pixel, normalised
    torch.testing.assert_close(x[:, :, :2, :], torch.full_like(x[:, :, :2, :], background))
    torch.testing.assert_close(x[:, 0], x[:, 2])
    rows = FashionMNISTDataModule(str(tmp_path), as_sequence=True, val_fraction=0.1)
    x, _ = next(iter(rows.train_dataloader()))
    assert x.shape[1:] == (28, 28) and rows.input_shape == (28, 28)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"image_size": 64}, "image_size"),
        ({"channels": 2}, "channels"),
        ({"as_sequence": 1}, "as_sequence"),
        ({"as_sequence": True, "image_size": 32}, "as_sequence"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"train_subset": 5}, "train_subset"),
        ({"data_dir": 3}, "data_dir"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], named: str) -> None:
    with pytest.raises((ValueError, TypeError), match=named):
        FashionMNISTDataModule(**kwargs)  # type: ignore[arg-type]


def test_the_make_target_says_where_the_files_are_or_how_to_get_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from lightning_dnn_tricks.data.fashion_mnist import main

    monkeypatch.setenv(DATA_DIR_VARIABLE, str(tmp_path))
    assert main() == 1
    assert "apt-get install dataset-fashion-mnist" in capsys.readouterr().out
    _write(tmp_path)
    assert main() == 0
    assert "Fashion-MNIST found" in capsys.readouterr().out
