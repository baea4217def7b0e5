"""Datasets load through torchvision's real loaders into scaled tensors; missing or broken files are one error."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dynhp_bench.data import datasets as data_module
from dynhp_bench.data.datasets import RAW_FILES, dataset_folder, load_dataset, resolve_data_dir, write_synthetic_dataset
from dynhp_bench.errors import DataError
from tests.conftest import SYNTHETIC_TEST, SYNTHETIC_TRAIN


@pytest.mark.parametrize("name", ["mnist", "fashion"])
def test_synthetic_idx_files_load_through_torchvision(synthetic_root: Path, name: str) -> None:
    data = load_dataset(name, synthetic_root, download=False)
    assert data.train_x.shape == (SYNTHETIC_TRAIN, 784) and data.test_x.shape == (SYNTHETIC_TEST, 784)
    assert data.train_x.dtype == torch.float32 and data.train_y.dtype == torch.int64
    assert float(data.train_x.min()) >= 0.0 and float(data.train_x.max()) <= 1.0
    assert set(data.train_y.tolist()) <= set(range(10))


def test_pixels_are_scaled_by_255(tmp_path: Path) -> None:
    folder = write_synthetic_dataset(tmp_path, "mnist", n_train=4, n_test=2)
    raw = (folder / "train-images-idx3-ubyte").read_bytes()[16:]
    data = load_dataset("mnist", tmp_path, download=False)
    assert data.train_x[0, :5].tolist() == pytest.approx([b / 255 for b in raw[:5]])


def test_subset_keeps_the_first_n_training_images(synthetic_root: Path) -> None:
    full = load_dataset("mnist", synthetic_root, download=False)
    part = load_dataset("mnist", synthetic_root, subset=100, download=False)
    assert torch.equal(part.train_x, full.train_x[:100]) and part.n_test == full.n_test
    with pytest.raises(DataError, match="--subset=9999 is larger than the 512 training images"):
        load_dataset("mnist", synthetic_root, subset=9999, download=False)


def test_missing_data_offline_names_the_folder_and_the_four_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise RuntimeError("Error downloading x:\nTried https://example/, got:\n<urlopen error no network>\n")

    monkeypatch.setattr(data_module.torchvision_class("FashionMNIST"), "download", no_network)
    with pytest.raises(DataError) as info:
        load_dataset("fashion", tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(dataset_folder(tmp_path, "fashion")) in message
    assert all(f in message for f in RAW_FILES)
    assert "urlopen error no network" in message


@pytest.mark.parametrize(
    ("file", "damage", "fragment"),
    [
        (
            "train-images-idx3-ubyte",
            lambda b: b[:100],
            "truncated: 100 bytes where its header (8 × 28 × 28) needs 6288",
        ),
        ("t10k-labels-idx1-ubyte", lambda b: b[:6], "truncated: its header is incomplete"),
        ("train-labels-idx1-ubyte", lambda b: b + b"xx", "too long"),
        ("t10k-images-idx3-ubyte", lambda b: b"\x1f\x8b" + b[2:], "not an uncompressed IDX file"),
    ],
)
def test_a_damaged_file_is_one_data_error_naming_it(
    tmp_path: Path, file: str, damage: Callable[[bytes], bytes], fragment: str
) -> None:
    folder = write_synthetic_dataset(tmp_path, "mnist", n_train=8, n_test=4)
    (folder / file).write_bytes(damage((folder / file).read_bytes()))
    with pytest.raises(DataError) as info:
        load_dataset("mnist", tmp_path, download=False)
    assert str(folder / file) in str(info.value) and fragment in str(info.value)


def test_data_root_is_argument_then_environment_then_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNHP_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DYNHP_DATA")
    assert resolve_data_dir(None) == tmp_path / "cache" / "dynhp-bench" / "data"


def test_the_registry_knows_each_datasets_shape_folder_files_and_checksums() -> None:
    assert {name: spec.shape for name, spec in data_module.DATASETS.items()} == {
        "mnist": (1, 28, 28), "fashion": (1, 28, 28), "cifar10": (3, 32, 32),
    }  # fmt: skip
    assert data_module.input_shape("cifar10") == (3, 32, 32) and data_module.DATASETS["cifar10"].pixels == 3072
    assert data_module.DATASETS["cifar10"].folder == "cifar-10-batches-bin"
    assert data_module.DATASETS["cifar10"].checksums == {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}
    for name, class_name in (("mnist", "MNIST"), ("fashion", "FashionMNIST")):
        # The md5s listed are those torchvision checks when it downloads the archives.
        assert dict(data_module.DATASETS[name].checksums) == dict(data_module.torchvision_class(class_name).resources)
        assert data_module.DATASETS[name].files == RAW_FILES
    with pytest.raises(DataError, match="dataset 'svhn' is not known; expected one of mnist, fashion, cifar10"):
        data_module.input_shape("svhn")
