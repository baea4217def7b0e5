"""SP, HP and DynHP on real MNIST (a subset, few epochs): the metrics move the right way."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from dynhp_bench.settings.config import TrainConfig
from dynhp_bench.training.threads import usable_cores
from dynhp_bench.training.trainer import Runtime, train

pytestmark = pytest.mark.integration

SUBSET = 6000
EPOCHS = 4


@pytest.fixture(scope="module")
def runs(real_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, list]:
    out = tmp_path_factory.mktemp("results")
    runtime = Runtime(data_dir=real_root, results_root=out, threads=min(2, usable_cores()), device="cpu")
    configs = {
        "sp": TrainConfig(strategy="sp", epochs=EPOCHS, subset=SUBSET, batch_size=128),
        "hp": TrainConfig(strategy="hp", epochs=EPOCHS, subset=SUBSET, batch_size=100),
        # γ = 0.8 sits just under the hidden gates' initial P(z≠0) = 0.83, so pruning starts within a few epochs.
        "hp_aggressive": TrainConfig(strategy="hp", epochs=EPOCHS, subset=SUBSET, batch_size=100, gamma=0.8),
        "dynhp": TrainConfig(strategy="dynhp", epochs=EPOCHS, subset=SUBSET, batch_size=16, gamma=0.8),
    }
    return {name: train(config, runtime).records for name, config in configs.items()}


@pytest.mark.parametrize("name", ["sp", "hp", "hp_aggressive", "dynhp"])
def test_error_falls(runs: dict[str, list], name: str) -> None:
    errors = [r.test_error_pct for r in runs[name]]
    assert errors[-1] < errors[0]
    assert errors[-1] < 15.0


def test_sp_memory_is_constant(runs: dict[str, list]) -> None:
    assert {r.model_bytes for r in runs["sp"]} == {1_066_440}


@pytest.mark.parametrize("name", ["hp", "hp_aggressive", "dynhp"])
def test_hard_pruning_model_bytes_never_grow(runs: dict[str, list], name: str) -> None:
    sizes = [r.model_bytes for r in runs[name]]
    assert sizes == sorted(sizes, reverse=True)


def test_aggressive_hard_pruning_actually_removes_neurons(runs: dict[str, list]) -> None:
    last = runs["hp_aggressive"][-1]
    assert last.model_bytes < 1_066_440
    assert last.active_1 < 300 or last.active_2 < 100


def test_dynhp_batch_grows_and_never_exceeds_its_cap(runs: dict[str, list]) -> None:
    records = runs["dynhp"]
    sizes = [r.batch_size for r in records]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0] == 16
    for previous, record in itertools.pairwise(records):
        assert previous.batch_cap is not None and record.batch_size <= previous.batch_cap
    budget = 1_066_440 + 512 * 3136
    assert all(r.model_bytes + r.batch_bytes <= budget for r in records)
