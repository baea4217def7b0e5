"""Results files and folders are created with the user's umask, like any file the user makes, so a shared
results folder can be shared (the atomic writer's temporary files are 0600 until told otherwise)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynhp_bench.cli.commands import main


@pytest.fixture
def umask() -> Iterator[None]:
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _main(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code in (0, None)


@pytest.mark.parametrize("mask", [0o022, 0o002])
def test_every_results_file_takes_the_users_umask(mask: int, umask: None, synthetic_root: Path, tmp_path: Path) -> None:
    os.umask(mask)
    out = tmp_path / "results"
    _main(["train", "--strategy", "dynhp", "--profile", "smoke", "--subset", "128", "--epochs", "1", "--threads",
           "1", "--data-dir", str(synthetic_root), "--out", str(out), "--quiet"])  # fmt: skip
    _main(["report", "--paper-tables", "--results", str(out)])
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"config.json", "summary.json", "checkpoint.pt", "epochs.csv", "COMPLETE", "table2_mnist.csv",
            "table2_mnist.md", "configurations.csv"} <= names, names  # fmt: skip
    assert any(p.suffix == ".png" for p in files)
    for path in files:
        assert _mode(path) == 0o666 & ~mask, f"{path.relative_to(out)} is {oct(_mode(path))}"
    for folder in [p for p in out.rglob("*") if p.is_dir()]:
        assert _mode(folder) == 0o777 & ~mask, f"{folder.relative_to(out)} is {oct(_mode(folder))}"
