"""Behaviour frozen: run ids of every committed sweep file and short trajectories of every strategy, as committed in
tests/golden/snapshot.json (generated from main before the published runs; see tests/golden/snapshot.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.golden.help import help_texts
from tests.golden.snapshot import FLOAT_COLUMNS, INT_COLUMNS, TRAJECTORIES, run_ids, trajectories

GOLDEN = json.loads((Path(__file__).parent / "golden" / "snapshot.json").read_text(encoding="utf-8"))


def test_every_run_id_of_every_sweep_file_is_unchanged() -> None:
    assert run_ids() == GOLDEN["run_ids"]
    assert sum(len(ids) for ids in GOLDEN["run_ids"].values()) == 540


@pytest.fixture(scope="module")
def current(synthetic_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[object]]]:
    return trajectories(synthetic_root, tmp_path_factory.mktemp("golden"))


@pytest.mark.parametrize("strategy", list(TRAJECTORIES))
def test_each_strategys_trajectory_is_unchanged(current: dict[str, dict[str, list[object]]], strategy: str) -> None:
    ours, golden = current[strategy], GOLDEN["trajectories"][strategy]
    assert ours["run_id"] == golden["run_id"]
    for column in INT_COLUMNS:
        assert ours[column] == golden[column], column
    for column in FLOAT_COLUMNS:
        for value, wanted in zip(ours[column], golden[column], strict=True):
            assert (math.isnan(value) and math.isnan(wanted)) or value == pytest.approx(wanted, rel=1e-6), column


HELP = json.loads((Path(__file__).parent / "golden" / "help.json").read_text(encoding="utf-8"))


def test_every_commands_help_is_unchanged() -> None:
    ours = help_texts()
    assert list(ours) == list(HELP)
    for command, text in HELP.items():
        assert ours[command] == text, command
