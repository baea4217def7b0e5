"""CIFAR-10's official binary version: read, checked, downloaded and (for tests) written, with no pickle.

The archive `cifar-10-binary.tar.gz` (https://www.cs.toronto.edu/~kriz/cifar.html, 162 MB, md5
c32a1d4ab5d03f1284b67883e8d87530) unpacks to `cifar-10-batches-bin/`: `data_batch_1.bin` … `data_batch_5.bin`
(10,000 images each) and `test_batch.bin` (10,000). Every record is one label byte (0-9) then 3,072 pixel
bytes: the red plane, then the green, then the blue, each 32 rows of 32 columns. A record's pixels are thus
already a flat row in channels × rows × columns order, which is how `data.Dataset` stores every image.
"""

from __future__ import annotations

import hashlib
import shutil
import tarfile
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dynhp_bench.errors import DataError

ARCHIVE_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE_NAME = "cifar-10-binary.tar.gz"
ARCHIVE_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # published on the dataset's page beside the link
FOLDER = "cifar-10-batches-bin"
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
FILES = (*TRAIN_FILES, TEST_FILE)
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
N_CLASSES = 10
CHUNK_BYTES = 1 << 20


def check_folder(folder: Path) -> int:
    """Check the six files as a whole, reading no more than their labels: each a whole number of records (and at
    least one), labels 0-9, and a training set at least as large as the test set (else the two look swapped).
    Returns the number of training images; a problem is a DataError naming the file."""
    counts = {name: _check_file(folder / name) for name in FILES}
    n_train = sum(counts[name] for name in TRAIN_FILES)
    if n_train < counts[TEST_FILE]:
        raise DataError(
            f"dataset files in {folder}: {n_train} training and {counts[TEST_FILE]} test images; expected a larger "
            f"training set (are {TEST_FILE} and the data_batch_*.bin files swapped?)"
        )
    return n_train


def _check_file(path: Path) -> int:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise DataError(f"dataset file {path} cannot be read: {exc.strerror or exc}") from None
    if size == 0 or size % RECORD_BYTES:
        raise DataError(
            f"dataset file {path} is {size:,} bytes; expected a whole number (at least one) of {RECORD_BYTES:,}-byte "
            f"records (1 label byte, then {PIXELS:,} pixel bytes), as in the official binary version"
        )
    largest = int(_records(path)[:, 0].max())
    if largest >= N_CLASSES:
        raise DataError(f"dataset file {path} holds label {largest}; expected labels 0 to {N_CLASSES - 1}")
    return size // RECORD_BYTES


def _records(path: Path) -> np.ndarray:
    try:
        return np.fromfile(path, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    except (OSError, ValueError) as exc:
        raise DataError(f"dataset file {path} cannot be read: {exc}") from None


def read_folder(folder: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training and test images as uint8 rows [N, 3,072] (R, G, B planes) and their int64 labels (call
    `check_folder` first)."""
    train = np.concatenate([_records(folder / name) for name in TRAIN_FILES])
    test = _records(folder / TEST_FILE)
    return (
        torch.from_numpy(train[:, 1:].copy()),
        torch.from_numpy(train[:, 0].astype(np.int64)),
        torch.from_numpy(test[:, 1:].copy()),
        torch.from_numpy(test[:, 0].astype(np.int64)),
    )


def download(root: Path, *, url: str = ARCHIVE_URL, md5: str = ARCHIVE_MD5) -> None:
    """Fetch the archive from `url` into `root`, check its md5, and unpack the six files into `root/FOLDER`.

    Only those six members are read from the archive (nothing else is extracted, so no path in it can escape
    `root`); each is written beside its final name and renamed into place. The archive is deleted afterwards.
    A failure raises (OSError, DataError, tarfile.TarError); the caller names the folder and the files, and
    bounds every socket operation with its timeout (`data._download`, as for MNIST)."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / FOLDER
    with tempfile.TemporaryDirectory(dir=root, prefix=".cifar-download-") as scratch:
        archive = Path(scratch) / ARCHIVE_NAME
        digest = hashlib.md5(usedforsecurity=False)
        with urllib.request.urlopen(url) as source, archive.open("wb") as target:
            while chunk := source.read(CHUNK_BYTES):
                digest.update(chunk)
                target.write(chunk)
        if digest.hexdigest() != md5:
            raise DataError(f"the archive has md5 {digest.hexdigest()}; expected {md5} (downloaded from {url})")
        with tarfile.open(archive, "r:gz") as tar:
            members = {member.name: member for member in tar.getmembers() if member.isfile()}
            absent = [name for name in FILES if f"{FOLDER}/{name}" not in members]
            if absent:
                raise DataError(f"the archive lacks {', '.join(absent)}; expected {', '.join(FILES)} (from {url})")
            folder.mkdir(exist_ok=True)
            for name in FILES:
                unpacked = Path(scratch) / name
                handle = tar.extractfile(members[f"{FOLDER}/{name}"])
                assert handle is not None  # a regular file's member always has its data
                with handle, unpacked.open("wb") as target:
                    shutil.copyfileobj(handle, target, CHUNK_BYTES)
                unpacked.replace(folder / name)


def write_file(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write uint8 images [N, 3, 32, 32] (or rows [N, 3,072]) and labels [N] as one official-format binary file."""
    rows = images.to(torch.uint8).reshape(images.shape[0], PIXELS)
    records = torch.cat([labels.to(torch.uint8).reshape(-1, 1), rows], dim=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(records.contiguous().numpy().tobytes())


def write_synthetic(folder: Path, *, n_train: int, n_test: int, seed: int = 0) -> None:
    """Write a small learnable CIFAR-10 look-alike in the official binary format: `n_train` images spread over
    the five training files (at least one each), `n_test` in the test file.

    Class k lights colour channel k mod 3 all over and one of four bands of eight rows (k div 3), over noise;
    the channel survives any crop or flip, so a few epochs of training separate most classes."""
    if n_train < len(TRAIN_FILES) or n_test < 1:
        raise ValueError(f"n_train={n_train}, n_test={n_test}; expected at least 5 training and 1 test image")
    generator = torch.Generator().manual_seed(seed)
    sizes: Sequence[int] = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    for name, n in (*zip(TRAIN_FILES, sizes, strict=True), (TEST_FILE, n_test)):
        labels = torch.randint(0, N_CLASSES, (n,), generator=generator)
        images = torch.randint(0, 160, (n, 3, 32, 32), generator=generator)
        for k in range(N_CLASSES):
            chosen = labels == k
            images[chosen, k % 3] += 25
            band = slice(8 * (k // 3), 8 * (k // 3) + 8)
            images[chosen, :, band] += 25
        write_file(folder / name, images.clamp(0, 255), labels)
