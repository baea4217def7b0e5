"""Shared fixtures: tiny synthetic datasets in their real formats and layouts, and the real data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import settings

from dynhp_bench.data.datasets import RAW_FILES, dataset_folder, write_synthetic_dataset

# Property-based tests replay the same examples on every run, for a user as in CI (Hypothesis derandomises only
# when CI is set), and read no example database. DYNHP_HYPOTHESIS=explore draws new examples each run (to look
# for failures; every one found becomes a plain regression test).
settings.register_profile("default", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, database=None, print_blob=True)
settings.load_profile(os.environ.get("DYNHP_HYPOTHESIS", "default"))

SYNTHETIC_TRAIN = 512
SYNTHETIC_TEST = 256


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding small learnable MNIST and Fashion-MNIST look-alikes as IDX files."""
    root = tmp_path_factory.mktemp("data")
    for seed, name in enumerate(("mnist", "fashion")):
        write_synthetic_dataset(root, name, n_train=SYNTHETIC_TRAIN, n_test=SYNTHETIC_TEST, seed=seed)
    return root


@pytest.fixture(scope="session")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root holding a small learnable CIFAR-10 look-alike in the official binary format."""
    root = tmp_path_factory.mktemp("cifar")
    write_synthetic_dataset(root, "cifar10", n_train=SYNTHETIC_TRAIN, n_test=SYNTHETIC_TEST, seed=2)
    return root


def _real_root() -> Path | None:
    candidates = [os.environ.get("DYNHP_DATA"), str(Path(__file__).resolve().parents[2] / "shared" / "data")]
    for candidate in candidates:
        if candidate and all((dataset_folder(Path(candidate), "mnist") / f).is_file() for f in RAW_FILES):
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_root() -> Path:
    """The real datasets (DYNHP_DATA, else ../shared/data); tests using it skip when neither has MNIST."""
    root = _real_root()
    if root is None:
        pytest.skip("real MNIST not found: set DYNHP_DATA to a folder with MNIST/raw/*-ubyte (see README)")
    return root
