"""Fashion-MNIST from its four IDX files, read offline with torchvision's reader."""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from lightning_dnn_tricks.data._optional import require
from lightning_dnn_tricks.data.base import (
    DatasetSplits,
    InMemoryDataModule,
    stratified_split,
)
from lightning_dnn_tricks.validation import check_bool, check_choice, check_number, check_text

#: The environment variable that names the folder of the IDX files.
DATA_DIR_VARIABLE = "LDT_FASHION_MNIST_DIR"
#: Where Debian's package ``dataset-fashion-mnist`` installs them.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
ImageSize = Literal[28, 32]
Channels = Literal[1, 3]


def default_data_dir() -> str:
    """``$LDT_FASHION_MNIST_DIR`` when set, else the Debian package's folder."""
    return os.environ.get(DATA_DIR_VARIABLE) or DEBIAN_DIR


def find_files(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """The four IDX files in ``data_dir``, plain or gzipped, in either layout.

    Accepted: the files themselves in ``data_dir`` (Debian's layout, or a copy), or torchvision's
    ``data_dir/FashionMNIST/raw/`` (what ``torchvision.datasets.FashionMNIST(data_dir,
    download=True)`` leaves).

    Raises:
        FileNotFoundError: a file is missing; the message says how to get them.
    """
    root = Path(default_data_dir() if data_dir is None else data_dir)
    folders = [root, root / "FashionMNIST" / "raw"]
    found: dict[str, Path] = {}
    for key, name in FILES.items():
        candidates = [folder / f"{name}{suffix}" for folder in folders for suffix in ("", ".gz")]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise FileNotFoundError(
                f"Fashion-MNIST: {name}[.gz] is not in {root} nor in {folders[1]}. Get the four "
                "IDX files either with Debian's package (`apt-get install dataset-fashion-mnist`, "
                f"which puts them in {DEBIAN_DIR}) or, on a machine with internet, with "
                "torchvision (`torchvision.datasets.FashionMNIST(DIR, download=True)` for train "
                "and test, then copy DIR here). Point `data_dir` (or "
                f"${DATA_DIR_VARIABLE}) at the folder."
            )
        found[key] = path
    return found


def read_idx(path: Path) -> torch.Tensor:
    """One IDX file as a tensor, with torchvision's reader (a ``.gz`` is unpacked first)."""
    mnist = require("torchvision.datasets.mnist", "FashionMNISTDataModule")
    if path.suffix != ".gz":
        return mnist.read_sn3_pascalvincent_tensor(str(path), strict=False)
    with tempfile.TemporaryDirectory() as folder:
        plain = Path(folder) / path.stem
        with gzip.open(path, "rb") as source, open(plain, "wb") as target:
            shutil.copyfileobj(source, target)
        return mnist.read_sn3_pascalvincent_tensor(str(plain), strict=False)


class FashionMNISTDataModule(InMemoryDataModule):
    """Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 70,000 grey 28x28 images of 10 clothing
    classes, read from the four IDX files on disk (nothing is downloaded).

    The 60,000 training images are split, class by class with a seeded permutation, into a
    training and a validation part (``val_fraction``); the official 10,000 test images are the
    test split. ``train_subset`` keeps a stratified, seeded subset of the training part for short
    runs. Images are scaled to [0, 1], normalised with the training part's pixel mean and
    standard deviation, optionally zero-padded to 32x32 (for timm backbones) and repeated to three
    channels. Batches are ``(x, y)``: ``x`` float32 ``(channels, size, size)``, or ``(28, 28)``
    (28 time steps of one 28-pixel row each) with ``as_sequence=True`` for the recurrent tricks;
    ``y`` int64 class indices.

    Args:
        data_dir: the folder of the IDX files (plain or ``.gz``; the files themselves or
            torchvision's ``FashionMNIST/raw`` below it). Default: ``$LDT_FASHION_MNIST_DIR``,
            else Debian's ``/usr/share/datasets/fashion-mnist``.
        batch_size: examples per batch (>= 1).
        image_size: ``28`` (native) or ``32`` (two zero pixels on every side).
        channels: ``1`` or ``3`` (the grey channel repeated, for RGB backbones).
        as_sequence: batches of row sequences ``(28, 28)`` (needs ``image_size=28``,
            ``channels=1``).
        val_fraction: fraction of each class of the 60,000 held out for validation, in (0, 1).
        train_subset: keep this many training examples (stratified), ``None`` for all.
        seed: seed of the split, the subset and the shuffling (in [0, 2**32 - 1]).
        num_workers: worker processes per loader (>= 0).
        drop_last: drop the last incomplete training batch.

    Attributes:
        num_classes: 10.
        classes: the class names, by index.
        input_shape: the shape of one ``x``.
        mean: the training part's pixel mean used for normalisation (after ``setup``).
        std: its pixel standard deviation (after ``setup``).

    Raises:
        ValueError: an argument is out of range (the message names it).
        TypeError: ``as_sequence`` or ``drop_last`` is not a ``bool``, or ``data_dir`` is not
            a string or ``None``.
        FileNotFoundError: at ``setup``, an IDX file is missing (the message says how to get it).

    Examples:
        >>> dm = FashionMNISTDataModule(batch_size=64, image_size=32, channels=3)
        >>> dm.input_shape          # known before the files are read (at setup)
        (3, 32, 32)
        >>> FashionMNISTDataModule(as_sequence=True).input_shape   # 28 steps of 28 pixels
        (28, 28)

        ``x, y = next(iter(dm.train_dataloader()))`` then gives ``x`` of shape
        ``(64, 3, 32, 32)``.
    """

    num_classes = 10
    classes = CLASSES

    def __init__(
        self,
        data_dir: str | None = None,
        batch_size: int = 128,
        image_size: ImageSize = 28,
        channels: Channels = 1,
        as_sequence: bool = False,
        val_fraction: float = 5000 / 60000,
        train_subset: int | None = None,
        seed: int = 0,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        check_text("data_dir", data_dir)
        check_choice("image_size", image_size, (28, 32))
        check_choice("channels", channels, (1, 3))
        check_bool("as_sequence", as_sequence)
        check_number(
            "val_fraction", val_fraction, low=0, high=1, low_inclusive=False, high_inclusive=False
        )
        if train_subset is not None:
            check_number("train_subset", train_subset, low=10, integer=True)
        if as_sequence and (image_size, channels) != (28, 1):
            raise ValueError(
                "`as_sequence` needs image_size=28 and channels=1 (28 rows of 28 pixels), got "
                f"image_size={image_size}, channels={channels}."
            )
        super().__init__(
            batch_size=batch_size, seed=seed, num_workers=num_workers, drop_last=drop_last
        )
        self.data_dir = data_dir
        self.image_size = image_size
        self.channels = channels
        self.as_sequence = as_sequence
        self.val_fraction = val_fraction
        self.train_subset = train_subset
        self.input_shape: tuple[int, ...] = (
            (28, 28) if as_sequence else (channels, image_size, image_size)
        )
        self.mean: float | None = None
        self.std: float | None = None

    def build_datasets(self) -> DatasetSplits:
        """Read the IDX files, split, subset, normalise and shape the images."""
        files = find_files(self.data_dir)
        train_labels = read_idx(files["train_labels"]).long()
        images = torch.cat([read_idx(files["train_images"]), read_idx(files["test_images"])])
        labels = torch.cat([train_labels, read_idx(files["test_labels"]).long()])
        n_train = len(train_labels)
        train, val = stratified_split(
            train_labels, {"val_fraction": self.val_fraction}, self.generator("split")
        )
        if self.train_subset is not None and self.train_subset < len(train):
            fraction = {"train_subset": self.train_subset / len(train)}
            _, kept = stratified_split(labels[train], fraction, self.generator("subset"))
            train = train[kept]
        test = torch.arange(n_train, len(labels))
        x = images.float().div_(255.0)
        mean, std = x[train].mean(), x[train].std()
        x = (x - mean) / std
        self.mean, self.std = float(mean), float(std)
        if self.image_size == 32:  # zero pixels, normalised like the others
            x = F.pad(x, (2, 2, 2, 2), value=float(-mean / std))
        return DatasetSplits(*(self._dataset(x[part], labels[part]) for part in (train, val, test)))

    def _dataset(self, x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
        if not self.as_sequence:  # the channels are a stride-0 view until batches are collated
            x = x.unsqueeze(1).expand(-1, self.channels, -1, -1)
        return TensorDataset(x, y)


def main() -> int:
    """Say where the files are, or how to get them (``make fashion-mnist``); 1 when missing."""
    try:
        files = find_files()
    except FileNotFoundError as error:
        print(error)
        return 1
    print("Fashion-MNIST found:", ", ".join(str(path) for path in files.values()))
    return 0
