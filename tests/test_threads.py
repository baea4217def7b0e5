"""The default torch thread count: 1 for small batches, workers × threads ≤ free cores, never 0."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from dynhp_bench.settings.config import resolve_config
from dynhp_bench.training.threads import SMALL_BATCH, default_threads, split_threads, usable_cores
from dynhp_bench.training.trainer import Runtime, train


@pytest.mark.parametrize(
    ("batch_size", "workers", "cores", "load", "expected"),
    [
        (16, 1, 16, 0.0, 1),  # small batch: one thread, however idle the machine
        (SMALL_BATCH - 1, 1, 16, 0.0, 1),
        (SMALL_BATCH, 1, 16, 0.0, 16),  # large batch on an idle machine: every core
        (512, 1, 2, 0.0, 2),
        (512, 1, 2, 0.6, 1),  # a busy core (load 0.6 rounds to 1) is not ours
        (512, 1, 2, 1.4, 1),
        (512, 1, 2, 5.0, 1),  # more load than cores: still one thread
        (512, 4, 16, 0.0, 4),  # workers × threads ≤ cores
        (512, 4, 16, 8.0, 2),  # ... ≤ the free cores
        (512, 3, 16, 0.0, 5),
        (512, 32, 16, 0.0, 1),  # more workers than cores
        (None, 2, 8, 0.0, 4),  # batch not known: the core split alone
    ],
)
def test_default_threads_never_oversubscribes(
    batch_size: int | None, workers: int, cores: int, load: float, expected: int
) -> None:
    threads = default_threads(batch_size=batch_size, workers=workers, cores=cores, load=load)
    assert threads == expected
    assert threads == 1 or workers * threads <= cores - round(load)


def test_an_explicit_total_is_split_between_workers() -> None:
    assert [split_threads(8, k) for k in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]


def test_usable_cores_honours_the_affinity_mask() -> None:
    if hasattr(os, "sched_getaffinity"):
        assert usable_cores() == len(os.sched_getaffinity(0))
    assert usable_cores() >= 1


def test_train_records_one_thread_for_a_small_batch_and_the_given_count_otherwise(
    synthetic_root: Path, tmp_path: Path
) -> None:
    before = torch.get_num_threads()
    config = resolve_config({"strategy": "sp", "profile": "smoke", "epochs": 1, "subset": 128, "batch_size": 16})
    try:
        for runtime, expected in (
            (Runtime(data_dir=synthetic_root, results_root=tmp_path / "auto"), 1),
            (Runtime(data_dir=synthetic_root, results_root=tmp_path / "given", threads=usable_cores()), usable_cores()),
        ):
            result = train(config, runtime)
            document = json.loads((result.run_dir / "config.json").read_text())
            assert document["runtime"]["threads"] == expected
    finally:
        torch.set_num_threads(before)
