"""The dataset registry (`DATASETS`: mnist, fashion, cifar10) and the datasets as in-memory tensors.

The data root is `--data-dir`, else the environment variable `DYNHP_DATA`, else a per-user cache folder. Each
dataset's entry names its folder under the root, the files expected there, the checksums of what is downloaded,
its image shape and classes, its loader, and whether training normalises and augments it by default:

* `mnist`, `fashion`: torchvision's layout (`MNIST/raw/*-ubyte`, `FashionMNIST/raw/*-ubyte`), uncompressed IDX
  files read through torchvision's `MNIST` / `FashionMNIST` classes, which download them (and check the md5 of
  each archive) when missing;
* `cifar10`: the official binary version in `cifar-10-batches-bin/` (`cifar.py`), downloaded as one archive
  of 162 MB whose md5 is checked.

A missing dataset is downloaded when the network allows; otherwise one error names the folder and the files.
Every image is stored as one flat float32 row in channels × rows × columns order (`input_shape`); a network
that wants images reshapes the rows itself.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from dynhp_bench.data import cifar
from dynhp_bench.errors import DataError, SettingsError

DATA_ENV = "DYNHP_DATA"
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
N_CLASSES = 10
DOWNLOAD_TIMEOUT_S = 30

Images = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Training images (uint8 rows [N, C·H·W]), training labels, test images, test labels."""


class Loader(Protocol):
    """How one file format is checked, read, downloaded and (for tests) written; `folder` is the dataset's."""

    def check(self, spec: DatasetSpec, folder: Path) -> int:
        """Check the files as a whole, cheaply; return the number of training images (a problem: DataError)."""
        ...

    def read(self, spec: DatasetSpec, root: Path, folder: Path) -> Images:
        """Read checked files into memory (a file the check passed but that cannot be read: DataError)."""
        ...

    def download(self, spec: DatasetSpec, root: Path) -> None:
        """Fetch the missing files under `root`; any failure raises (the caller names the folder and files)."""
        ...

    def write_synthetic(self, spec: DatasetSpec, folder: Path, *, n_train: int, n_test: int, seed: int) -> None:
        """Write a small learnable look-alike in the same format."""
        ...


@dataclass(frozen=True)
class DatasetSpec:
    """One entry of the registry. `shape` is (channels, rows, columns); `checksums` maps each file downloaded to
    its published md5; `augment` and `normalize` are the defaults of the training settings of the same names."""

    key: str
    title: str
    shape: tuple[int, int, int]
    classes: int
    folder: str
    files: tuple[str, ...]
    checksums: Mapping[str, str]
    loader: Loader
    augment: bool
    normalize: bool

    @property
    def pixels(self) -> int:
        """Values in one image: channels × rows × columns (the width of its flat row)."""
        return math.prod(self.shape)


class IdxLoader:
    """Uncompressed IDX files in torchvision's layout, read and downloaded by its class `torchvision_name`."""

    def __init__(self, torchvision_name: str) -> None:
        self.torchvision_name = torchvision_name

    def check(self, spec: DatasetSpec, folder: Path) -> int:
        return check_idx_folder(spec, folder)

    def read(self, spec: DatasetSpec, root: Path, folder: Path) -> Images:
        cls = self.torchvision_class()
        try:
            train = cls(str(root), train=True, download=False)
            test = cls(str(root), train=False, download=False)
        except Exception as exc:  # torchvision raises several types for a truncated or foreign IDX file
            raise DataError(
                f"dataset files in {folder} could not be read ({exc}); expected the IDX files "
                f"{', '.join(spec.files)} as published"
            ) from None
        return (_rows(train.data), train.targets.to(torch.int64), _rows(test.data), test.targets.to(torch.int64))

    def download(self, spec: DatasetSpec, root: Path) -> None:
        self.torchvision_class()(str(root), train=True, download=True)

    def write_synthetic(self, spec: DatasetSpec, folder: Path, *, n_train: int, n_test: int, seed: int) -> None:
        write_synthetic_idx(folder, n_train=n_train, n_test=n_test, seed=seed)

    def torchvision_class(self) -> Any:
        """torchvision's dataset class for this format."""
        return torchvision_class(self.torchvision_name)


class CifarLoader:
    """CIFAR-10's official binary version (`cifar.py`), fetched from `url` with the archive's md5 checked."""

    def __init__(self, url: str = cifar.ARCHIVE_URL) -> None:
        self.url = url

    def check(self, spec: DatasetSpec, folder: Path) -> int:
        return cifar.check_folder(folder)

    def read(self, spec: DatasetSpec, root: Path, folder: Path) -> Images:
        return cifar.read_folder(folder)

    def download(self, spec: DatasetSpec, root: Path) -> None:
        cifar.download(root, url=self.url, md5=spec.checksums[cifar.ARCHIVE_NAME])

    def write_synthetic(self, spec: DatasetSpec, folder: Path, *, n_train: int, n_test: int, seed: int) -> None:
        cifar.write_synthetic(folder, n_train=n_train, n_test=n_test, seed=seed)


# The md5 of each archive torchvision downloads for MNIST / Fashion-MNIST (its `resources`, which it checks).
DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "mnist", "MNIST", (1, 28, 28), N_CLASSES, "MNIST/raw", RAW_FILES,
        {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
         "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
         "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
         "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        IdxLoader("MNIST"), augment=False, normalize=False,
    ),
    "fashion": DatasetSpec(
        "fashion", "Fashion-MNIST", (1, 28, 28), N_CLASSES, "FashionMNIST/raw", RAW_FILES,
        {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
         "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
         "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
         "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        IdxLoader("FashionMNIST"), augment=False, normalize=False,
    ),
    "cifar10": DatasetSpec(
        "cifar10", "CIFAR-10", (3, 32, 32), N_CLASSES, cifar.FOLDER, cifar.FILES,
        {cifar.ARCHIVE_NAME: cifar.ARCHIVE_MD5}, CifarLoader(), augment=True, normalize=True,
    ),
}  # fmt: skip


def dataset_spec(name: str) -> DatasetSpec:
    """The registry's entry for `name` (an unknown name is a DataError listing the known ones)."""
    if name not in DATASETS:
        raise DataError(f"dataset {name!r} is not known; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


def input_shape(name: str) -> tuple[int, int, int]:
    """(channels, rows, columns) of every image of dataset `name`."""
    return dataset_spec(name).shape


@dataclass(frozen=True)
class Dataset:
    """Train and test sets as float32 pixels in [0, 1], flattened to rows, and int64 labels."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @property
    def n_train(self) -> int:
        """Number of training examples."""
        return int(self.train_x.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test examples."""
        return int(self.test_x.shape[0])


def resolve_data_dir(data_dir: Path | None) -> Path:
    """The data root: the argument, else `$DYNHP_DATA`, else `$XDG_CACHE_HOME/dynhp-bench/data`."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "dynhp-bench" / "data"


def dataset_folder(root: Path, name: str) -> Path:
    """Where the files of dataset `name` are under the data root `root`."""
    return root / dataset_spec(name).folder


def load_dataset(name: str, root: Path, *, subset: int | None = None, download: bool = True) -> Dataset:
    """Load dataset `name` (a key of `DATASETS`) under `root` into memory, once.

    `subset` keeps the first N training images (the test set is always whole).
    """
    spec = dataset_spec(name)
    if subset is not None and subset < 1:  # a negative slice would silently keep all but the last images
        raise SettingsError(f"--subset={subset} is not valid; expected an integer ≥ 1")
    folder = dataset_folder(root, name)
    missing = [f for f in spec.files if not (folder / f).is_file()]
    if missing:
        if not download:
            raise DataError(_missing_message(spec, folder, missing, "downloading is off"))
        _download(spec, root, folder, missing)
    check_dataset(name, root)
    train_x, train_y, test_x, test_y = spec.loader.read(spec, root, folder)
    if subset is not None:
        if subset > train_x.shape[0]:
            raise DataError(f"--subset={subset} is larger than the {train_x.shape[0]} training images of {name}")
        train_x, train_y = train_x[:subset], train_y[:subset]
    return Dataset(
        name=name,
        train_x=_as_floats(train_x),
        train_y=train_y.to(torch.int64).contiguous(),
        test_x=_as_floats(test_x),
        test_y=test_y.to(torch.int64).contiguous(),
    )


def check_dataset(name: str, root: Path) -> int:
    """Check dataset `name` under `root` as a whole, reading no more than its labels (see each loader's check);
    returns the number of training images; a problem is a DataError naming the file."""
    spec = dataset_spec(name)
    return spec.loader.check(spec, dataset_folder(root, name))


def check_idx_folder(spec: DatasetSpec, folder: Path) -> int:
    """The IDX files' check: every file's header against its size, images of the dataset's size, as many labels
    as images, labels below the number of classes, and a training set at least as large as the test set (else the
    two look swapped). Returns the number of training images."""
    counts = {}
    for file in RAW_FILES:
        counts[file] = check_idx_file(folder / file)
    rows_columns = spec.shape[1:]
    for split in ("train", "t10k"):
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        size = tuple(images[1:])
        if size != rows_columns:
            raise DataError(
                f"dataset file {folder / f'{split}-images-idx3-ubyte'} holds {size[0]}×{size[1]} images; expected "
                f"{rows_columns[0]}×{rows_columns[1]} for {spec.key}"
            )
        if images[0] != labels[0]:
            raise DataError(
                f"dataset file {folder / f'{split}-labels-idx1-ubyte'} holds {labels[0]} labels for {images[0]} "
                "images; expected one label per image"
            )
        path = folder / f"{split}-labels-idx1-ubyte"
        try:
            largest = max(path.read_bytes()[8:], default=0)
        except OSError as exc:
            raise DataError(f"dataset file {path} cannot be read: {exc.strerror or exc}") from None
        if largest >= spec.classes:
            raise DataError(f"dataset file {path} holds label {largest}; expected labels 0 to {spec.classes - 1}")
    n_train, n_test = counts[RAW_FILES[0]][0], counts[RAW_FILES[2]][0]
    if n_train < n_test or n_train == 0:
        raise DataError(
            f"dataset files in {folder}: {n_train} training and {n_test} test images; expected a larger training "
            "set (are train-* and t10k-* swapped?)"
        )
    return n_train


def check_idx_file(path: Path) -> tuple[int, ...]:
    """Check an uncompressed IDX file's header against its size and return its dimensions; a bad one is a DataError
    naming it."""
    expected_dims = 3 if "images" in path.name else 1
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            header = handle.read(4 + 4 * expected_dims)
    except OSError as exc:
        raise DataError(f"dataset file {path} cannot be read: {exc.strerror or exc}") from None
    if len(header) < 4 or header[:2] != b"\x00\x00" or header[2] != 0x08 or header[3] != expected_dims:
        raise DataError(
            f"dataset file {path} is not an uncompressed IDX file of unsigned bytes with {expected_dims} dimension(s)"
        )
    if len(header) < 4 + 4 * expected_dims:
        raise DataError(f"dataset file {path} is truncated: its header is incomplete")
    dims = struct.unpack(f">{expected_dims}I", header[4:])
    expected = len(header) + math.prod(dims)
    if size != expected:
        raise DataError(
            f"dataset file {path} is {'truncated' if size < expected else 'too long'}: {size} bytes where its "
            f"header ({' × '.join(map(str, dims))}) needs {expected}"
        )
    return tuple(dims)


def torchvision_class(class_name: str) -> Any:
    """torchvision's dataset class `class_name`, imported on first use (torchvision costs ~1.5 s at start-up)."""
    from torchvision import datasets

    return getattr(datasets, class_name)


def _rows(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1)


def _as_floats(rows: torch.Tensor) -> torch.Tensor:
    return rows.to(torch.float32).div_(255.0).contiguous()


def _download(spec: DatasetSpec, root: Path, folder: Path, missing: list[str]) -> None:
    created: Path | None = None  # the outermost folder the download creates, removed again if it fails
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        created = candidate
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        spec.loader.download(spec, root)
    except Exception as exc:  # no network, a mirror down, a bad checksum, a read-only folder: all end alike
        if created is not None:  # a mistyped --data-dir must not be left behind with an empty MNIST/raw in it
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(_missing_message(spec, folder, missing, f"download failed: {_one_line(exc)}")) from None
    finally:
        socket.setdefaulttimeout(previous)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's text on one line; for torchvision's download errors, the last reason given."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if "error" in line.lower() and not line.lower().startswith("error downloading")]
    text = (reasons[-1] if reasons else " ".join(lines)) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _missing_message(spec: DatasetSpec, folder: Path, missing: list[str], why: str) -> str:
    which = "" if len(missing) == len(spec.files) else f" (missing: {', '.join(missing)})"
    return (
        f"dataset {spec.key!r} is missing from {folder} ({why}); expected the files {', '.join(spec.files)} there"
        f"{which}; pass --data-dir or set {DATA_ENV}"
    )


def write_idx(path: Path, values: torch.Tensor) -> None:
    """Write a uint8 tensor as an uncompressed IDX file (the format torchvision reads), for tests."""
    data = values.to(torch.uint8).contiguous()
    header = struct.pack(">HBB", 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + data.numpy().tobytes())


def write_synthetic_dataset(root: Path, name: str, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a small learnable look-alike of dataset `name` under `root`, in its real format and folder, for the
    real loader to read; returns the folder."""
    spec = dataset_spec(name)
    folder = dataset_folder(root, name)
    spec.loader.write_synthetic(spec, folder, n_train=n_train, n_test=n_test, seed=seed)
    return folder


def write_synthetic_idx(folder: Path, *, n_train: int, n_test: int, seed: int = 0) -> None:
    """Write a small learnable MNIST look-alike as IDX files in `folder`.

    Each class lights a different band of rows of the 28×28 image, plus noise, so a few epochs of
    training separate the classes.
    """
    generator = torch.Generator().manual_seed(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=generator)
        images = torch.randint(0, 60, (n, 28, 28), generator=generator)
        for k in range(10):
            rows = slice(2 * k + 4, 2 * k + 6)
            images[labels == k, rows, 4:24] += 180
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images.clamp(0, 255))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
