"""What the golden test holds (tests/test_golden.py): every run id of every committed sweep file at every profile,
and short training trajectories of every strategy on synthetic data.

Regenerate only on purpose, when a change is meant to alter run ids or numerics (it voids published runs: say so):
``python -m tests.golden.snapshot > tests/golden/snapshot.json``.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from dynhp_bench.data.datasets import write_synthetic_dataset
from dynhp_bench.settings.config import PROFILES, TrainConfig
from dynhp_bench.sweep.spec import expand, read_sweep_file
from dynhp_bench.training.trainer import Runtime, train

SWEEPS = Path(__file__).resolve().parents[2] / "sweeps"
# Columns of epochs.csv that are integers (held exactly) and floats (held to a relative 1e-6: compiled loops on
# another CPU may round a last digit differently); timing columns are left out.
INT_COLUMNS = (
    "batch_size",
    "active_0",
    "active_1",
    "active_2",
    "model_bytes",
    "batch_bytes",
    "nonzero_params",
    "steps",
)
FLOAT_COLUMNS = ("train_loss", "train_penalty", "test_error_pct", "expected_active_0", "variance_ratio")
TRAJECTORIES: dict[str, dict[str, Any]] = {
    "dense": {"strategy": "dense", "batch_size": 64},
    "sp": {"strategy": "sp", "batch_size": 64},
    "hp": {"strategy": "hp", "batch_size": 32, "gamma": 0.84},
    "dynhp": {"strategy": "dynhp", "batch_size": 16, "gamma": 0.84, "alpha_bs": 0.9},
    "dyprune": {"strategy": "dyprune", "batch_size": 64},
}


def run_ids() -> dict[str, list[str]]:
    """Every run id of every sweep file under sweeps/, at each profile, in the files' order."""
    ids = {}
    for path in sorted(SWEEPS.glob("*.toml")):
        spec = read_sweep_file(path)
        for profile in PROFILES:
            sweep = expand(spec, overrides={"profile": profile})
            ids[f"{path.name}:{profile}"] = [p.config.run_id for g in sweep.groups for p in g.points]
    return ids


def trajectories(data_root: Path, results_root: Path) -> dict[str, dict[str, list[Any]]]:
    """Four epochs of each strategy on the synthetic MNIST look-alike: the columns that must not change."""
    out = {}
    for name, settings in TRAJECTORIES.items():
        config = TrainConfig(**{"epochs": 4, "profile": "smoke", "subset": 512, **settings})
        result = train(config, Runtime(data_dir=data_root, results_root=results_root, threads=1, device="cpu"))
        epochs = result.records
        assert epochs is not None
        out[name] = {"run_id": [config.run_id]} | {
            column: [getattr(r, column) for r in epochs] for column in (*INT_COLUMNS, *FLOAT_COLUMNS)
        }
    return out


def synthetic_data(root: Path) -> Path:
    """The synthetic MNIST look-alike the trajectories train on (as tests/conftest.py writes it)."""
    write_synthetic_dataset(root, "mnist", n_train=512, n_test=256, seed=0)
    return root


def snapshot() -> dict[str, Any]:
    """The whole golden document."""
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_data(Path(tmp) / "data")
        return {"run_ids": run_ids(), "trajectories": trajectories(data, Path(tmp) / "results")}


if __name__ == "__main__":
    json.dump(snapshot(), sys.stdout, indent=1, sort_keys=True, allow_nan=True)
    sys.stdout.write("\n")
