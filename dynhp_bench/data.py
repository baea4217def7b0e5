"""Datasets as in-memory tensors, read through torchvision's `MNIST` / `FashionMNIST` classes.

The data root is `--data-dir`, else the environment variable `DYNHP_DATA`, else a per-user cache folder.
Under it torchvision's layout is expected (`MNIST/raw/*-ubyte`, `FashionMNIST/raw/*-ubyte`). A missing
dataset is downloaded when the network allows; otherwise one error names the folder and the files.
"""

from __future__ import annotations

import math
import os
import shutil
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dynhp_bench.errors import DataError, SettingsError

DATA_ENV = "DYNHP_DATA"
RAW_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# Our dataset keys → torchvision's class names (also the folder names of its layout).
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion": "FashionMNIST"}
IMAGE_SIZE = {"mnist": (28, 28), "fashion": (28, 28)}  # rows × columns of every image
N_CLASSES = 10
DOWNLOAD_TIMEOUT_S = 30


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


def raw_folder(root: Path, name: str) -> Path:
    """Where torchvision keeps the raw IDX files of dataset `name` under `root`."""
    return root / TORCHVISION_CLASSES[name] / "raw"


def load_dataset(name: str, root: Path, *, subset: int | None = None, download: bool = True) -> Dataset:
    """Load dataset `name` (``mnist`` or ``fashion``) under `root` into memory, once.

    `subset` keeps the first N training images (the test set is always whole).
    """
    if name not in TORCHVISION_CLASSES:
        raise DataError(f"dataset {name!r} is not known; expected one of {', '.join(TORCHVISION_CLASSES)}")
    if subset is not None and subset < 1:  # a negative slice would silently keep all but the last images
        raise SettingsError(f"--subset={subset} is not valid; expected an integer ≥ 1")
    folder = raw_folder(root, name)
    missing = [f for f in RAW_FILES if not (folder / f).is_file()]
    if missing:
        if not download:
            raise DataError(_missing_message(name, folder, missing, "downloading is off"))
        _download(name, root, folder, missing)
    check_dataset(name, root)
    cls = torchvision_class(name)
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
        train_x, train_y = train.data, train.targets
        test_x, test_y = test.data, test.targets
    except Exception as exc:  # torchvision raises several types for a truncated or foreign IDX file
        raise DataError(
            f"dataset files in {folder} could not be read ({exc}); expected the IDX files "
            f"{', '.join(RAW_FILES)} as published"
        ) from None
    if subset is not None:
        if subset > train_x.shape[0]:
            raise DataError(f"--subset={subset} is larger than the {train_x.shape[0]} training images of {name}")
        train_x, train_y = train_x[:subset], train_y[:subset]
    return Dataset(
        name=name,
        train_x=_as_rows(train_x),
        train_y=train_y.to(torch.int64).contiguous(),
        test_x=_as_rows(test_x),
        test_y=test_y.to(torch.int64).contiguous(),
    )


def check_dataset(name: str, root: Path) -> int:
    """Check dataset `name` under `root` as a whole, reading no more than its labels: every IDX file's header against
    its size, images of the dataset's size, as many labels as images, labels in 0-9, and a training set at least as
    large as the test set (else the two look swapped). Returns the number of training images; a problem is a
    DataError naming the file."""
    folder = raw_folder(root, name)
    counts = {}
    for file in RAW_FILES:
        counts[file] = check_idx_file(folder / file)
    for split in ("train", "t10k"):
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        size = tuple(images[1:])
        if size != IMAGE_SIZE[name]:
            raise DataError(
                f"dataset file {folder / f'{split}-images-idx3-ubyte'} holds {size[0]}×{size[1]} images; expected "
                f"{IMAGE_SIZE[name][0]}×{IMAGE_SIZE[name][1]} for {name}"
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
        if largest >= N_CLASSES:
            raise DataError(f"dataset file {path} holds label {largest}; expected labels 0 to {N_CLASSES - 1}")
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


def torchvision_class(name: str) -> Any:
    """torchvision's dataset class for `name`, imported on first use (torchvision costs ~1.5 s at start-up)."""
    from torchvision import datasets

    return getattr(datasets, TORCHVISION_CLASSES[name])


def _as_rows(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).to(torch.float32).div_(255.0).contiguous()


def _download(name: str, root: Path, folder: Path, missing: list[str]) -> None:
    created: Path | None = None  # the outermost folder the download creates, removed again if it fails
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            break
        created = candidate
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torchvision_class(name)(str(root), train=True, download=True)
    except Exception as exc:  # no network, a mirror down, a read-only folder: all end the same way for a user
        if created is not None:  # a mistyped --data-dir must not be left behind with an empty MNIST/raw in it
            shutil.rmtree(created, ignore_errors=True)
        raise DataError(_missing_message(name, folder, missing, f"download failed: {_one_line(exc)}")) from None
    finally:
        socket.setdefaulttimeout(previous)


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """An exception's text on one line; for torchvision's download errors, the last reason given."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if "error" in line.lower() and not line.lower().startswith("error downloading")]
    text = (reasons[-1] if reasons else " ".join(lines)) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _missing_message(name: str, folder: Path, missing: list[str], why: str) -> str:
    which = "" if len(missing) == len(RAW_FILES) else f" (missing: {', '.join(missing)})"
    return (
        f"dataset {name!r} is missing from {folder} ({why}); expected the files {', '.join(RAW_FILES)} there"
        f"{which}; pass --data-dir or set {DATA_ENV}"
    )


def write_idx(path: Path, values: torch.Tensor) -> None:
    """Write a uint8 tensor as an uncompressed IDX file (the format torchvision reads), for tests."""
    data = values.to(torch.uint8).contiguous()
    header = struct.pack(">HBB", 0, 0x08, data.dim()) + struct.pack(f">{data.dim()}I", *data.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + data.numpy().tobytes())


def write_synthetic_dataset(root: Path, name: str, *, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a small learnable dataset in torchvision's layout under `root`; returns its raw folder.

    Each class lights a different band of rows of the 28×28 image, plus noise, so a few epochs of
    training separate the classes.
    """
    generator = torch.Generator().manual_seed(seed)
    folder = raw_folder(root, name)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=generator)
        images = torch.randint(0, 60, (n, 28, 28), generator=generator)
        for k in range(10):
            rows = slice(2 * k + 4, 2 * k + 6)
            images[labels == k, rows, 4:24] += 180
        write_idx(folder / f"{prefix}-images-idx3-ubyte", images.clamp(0, 255))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels)
    return folder
