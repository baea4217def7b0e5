"""CIFAR-10's binary version through the real loader: exact pixels and labels, plane order, the download with its
checksum (from a local file:// archive), and missing or damaged files as one error naming the folder or file."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from pathlib import Path

import pytest
import torch

from dynhp_bench.data import cifar
from dynhp_bench.data import datasets as data_module
from dynhp_bench.data.datasets import CifarLoader, dataset_folder, input_shape, load_dataset, write_synthetic_dataset
from dynhp_bench.errors import DataError


def _write_all(folder: Path, images: torch.Tensor, labels: torch.Tensor, *, n_test: int) -> None:
    """The first images into the five training files (one more in the first ones), the last `n_test` as test."""
    n_train = images.shape[0] - n_test
    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    start = 0
    for name, size in zip(cifar.TRAIN_FILES, sizes, strict=True):
        cifar.write_file(folder / name, images[start : start + size], labels[start : start + size])
        start += size
    cifar.write_file(folder / cifar.TEST_FILE, images[n_train:], labels[n_train:])


def test_pixels_and_labels_round_trip_exactly(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (23, 3, 32, 32), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (23,), generator=generator)
    _write_all(tmp_path / cifar.FOLDER, images, labels, n_test=8)
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.train_x.shape == (15, 3072) and data.test_x.shape == (8, 3072)
    assert torch.equal(torch.round(data.train_x * 255).to(torch.uint8), images[:15].reshape(15, -1))
    assert torch.equal(torch.round(data.test_x * 255).to(torch.uint8), images[15:].reshape(8, -1))
    assert data.train_y.tolist() == labels[:15].tolist() and data.test_y.tolist() == labels[15:].tolist()
    assert data.train_y.dtype == torch.int64


def test_a_record_is_a_label_then_the_red_green_and_blue_planes(tmp_path: Path) -> None:
    # One record by hand: label 7, red plane all 10, green 20 except row 1 column 2 (99), blue 30.
    green = bytearray([20] * 1024)
    green[1 * 32 + 2] = 99
    record = bytes([7]) + bytes([10] * 1024) + bytes(green) + bytes([30] * 1024)
    folder = tmp_path / cifar.FOLDER
    folder.mkdir()
    for name in cifar.FILES:
        (folder / name).write_bytes(record)
    data = load_dataset("cifar10", tmp_path, download=False)
    image = torch.round(data.train_x[0] * 255).reshape(input_shape("cifar10"))
    assert data.train_y.tolist() == [7] * 5 and data.test_y.tolist() == [7]
    assert image[0].unique().tolist() == [10.0] and image[2].unique().tolist() == [30.0]
    assert image[1, 1, 2] == 99 and image[1, 0, 0] == 20 and int((image[1] == 99).sum()) == 1


def test_synthetic_files_hold_the_images_asked_for_in_the_official_layout(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path, "cifar10", n_train=12, n_test=4)
    assert folder == tmp_path / "cifar-10-batches-bin"
    sizes = [(folder / name).stat().st_size for name in cifar.FILES]
    assert sizes == [3 * 3073, 3 * 3073, 2 * 3073, 2 * 3073, 2 * 3073, 4 * 3073]
    data = load_dataset("cifar10", tmp_path, download=False)
    assert data.n_train == 12 and data.n_test == 4


def test_missing_files_offline_name_the_folder_and_the_six_files(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "cifar-10-batches-bin") in message
    assert all(name in message for name in cifar.FILES) and "downloading is off" in message
    write_synthetic_dataset(tmp_path, "cifar10", n_train=5, n_test=1)
    (tmp_path / cifar.FOLDER / "data_batch_3.bin").unlink()
    with pytest.raises(DataError, match=r"\(missing: data_batch_3\.bin\)"):
        load_dataset("cifar10", tmp_path, download=False)


@pytest.mark.parametrize(
    ("file", "damage", "fragment"),
    [
        ("data_batch_2.bin", lambda b: b[:-1], "is 6,145 bytes; expected a whole number (at least one) of 3,073-byte"),
        ("test_batch.bin", lambda b: b + b"x", "is 6,147 bytes; expected a whole number"),
        ("data_batch_5.bin", lambda b: b"", "is 0 bytes"),
        ("data_batch_1.bin", lambda b: bytes([10]) + b[1:], "holds label 10; expected labels 0 to 9"),
    ],
)
def test_a_damaged_file_is_one_data_error_naming_it(tmp_path: Path, file: str, damage: object, fragment: str) -> None:
    folder = write_synthetic_dataset(tmp_path, "cifar10", n_train=10, n_test=2)
    (folder / file).write_bytes(damage((folder / file).read_bytes()))  # type: ignore[operator]
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path, download=False)
    assert str(folder / file) in str(info.value) and fragment in str(info.value)


def test_a_test_set_larger_than_the_training_set_looks_swapped(tmp_path: Path) -> None:
    write_synthetic_dataset(tmp_path, "cifar10", n_train=5, n_test=6)
    with pytest.raises(DataError, match="5 training and 6 test images; expected a larger training set"):
        load_dataset("cifar10", tmp_path, download=False)


def _archive(tmp_path: Path) -> bytes:
    """A tar.gz shaped like the official one: the six files under cifar-10-batches-bin/, plus two others."""
    source = write_synthetic_dataset(tmp_path / "source", "cifar10", n_train=10, n_test=3, seed=4)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in (*cifar.FILES, "readme.html"):
            path = source / name
            if not path.exists():
                path.write_text("<html></html>")
            tar.add(path, arcname=f"cifar-10-batches-bin/{name}")
        evil = tarfile.TarInfo("../outside.txt")  # never extracted: only the six expected members are read
        evil.size = 1
        tar.addfile(evil, io.BytesIO(b"x"))
    return buffer.getvalue()


def _serve(monkeypatch: pytest.MonkeyPatch, archive: Path, md5: str) -> None:
    spec = dataclasses.replace(
        data_module.DATASETS["cifar10"], loader=CifarLoader(url=archive.as_uri()), checksums={cifar.ARCHIVE_NAME: md5}
    )
    monkeypatch.setitem(data_module.DATASETS, "cifar10", spec)


def test_a_missing_set_is_downloaded_checked_and_unpacked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _archive(tmp_path)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(payload)
    _serve(monkeypatch, archive, hashlib.md5(payload).hexdigest())
    root = tmp_path / "root"
    data = load_dataset("cifar10", root)
    reference = load_dataset("cifar10", tmp_path / "source")
    assert torch.equal(data.train_x, reference.train_x) and torch.equal(data.test_y, reference.test_y)
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-batches-bin"], "the archive is not left behind"
    assert sorted(p.name for p in (root / "cifar-10-batches-bin").iterdir()) == sorted(cifar.FILES)
    assert not (tmp_path / "outside.txt").exists()


def test_a_download_with_the_wrong_checksum_is_refused_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = _archive(tmp_path)
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(payload)
    _serve(monkeypatch, archive, cifar.ARCHIVE_MD5)  # the real archive's md5, not this one's
    root = tmp_path / "new" / "root"
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", root)
    message = str(info.value)
    assert "\n" not in message and str(root / "cifar-10-batches-bin") in message
    assert f"archive has md5 {hashlib.md5(payload).hexdigest()}; expected {cifar.ARCHIVE_MD5}" in message
    assert not (tmp_path / "new").exists(), "the folders the download created are removed again"


def test_an_unreachable_source_names_the_folder_and_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _serve(monkeypatch, tmp_path / "nowhere.tar.gz", cifar.ARCHIVE_MD5)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", tmp_path)
    message = str(info.value)
    assert "download failed" in message and str(dataset_folder(tmp_path, "cifar10")) in message
    assert all(name in message for name in cifar.FILES) and "\n" not in message


def test_an_archive_lacking_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = write_synthetic_dataset(tmp_path / "source", "cifar10", n_train=5, n_test=1)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in cifar.TRAIN_FILES:  # no test_batch.bin
            tar.add(source / name, arcname=f"cifar-10-batches-bin/{name}")
    archive = tmp_path / "cifar-10-binary.tar.gz"
    archive.write_bytes(buffer.getvalue())
    _serve(monkeypatch, archive, hashlib.md5(buffer.getvalue()).hexdigest())
    with pytest.raises(DataError, match=r"download failed: the archive lacks test_batch\.bin; expected data_batch_1"):
        load_dataset("cifar10", tmp_path / "root")
    assert not (tmp_path / "root").exists()
