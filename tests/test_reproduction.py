"""The published reproduction (results/paper/): every committed table and figure's data is what `report` computes
from the committed runs, so a published number is always the code's number."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynhp_bench.cli.commands import main
from dynhp_bench.training.run_folder import RunFolder, complete_runs

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper"
COMPARED = ("*.csv", "*.md")


def test_the_published_runs_are_complete_and_in_the_published_form() -> None:
    runs = list(complete_runs(PAPER))
    assert runs, f"no published runs under {PAPER}/runs"
    assert all(RunFolder(folder.path).is_published for folder in runs)
    assert not any((PAPER / "runs").glob("*/checkpoint.pt"))


def test_the_committed_report_is_what_report_computes_from_the_committed_runs(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", "--paper-tables", "--results", str(PAPER), "--out", str(tmp_path)])
    assert info.value.code == 0
    committed = PAPER / "report"
    for pattern in COMPARED:
        names = sorted(p.name for p in committed.glob(pattern))
        assert names == sorted(p.name for p in tmp_path.glob(pattern)), pattern
        for name in names:
            assert (tmp_path / name).read_text(encoding="utf-8") == (committed / name).read_text(encoding="utf-8"), (
                f"results/paper/report/{name} is stale: regenerate it with "
                "`dynhp-bench report --paper-tables --results results/paper`"
            )
    assert sorted(p.name for p in committed.glob("*.png")) == sorted(p.name for p in tmp_path.glob("*.png"))
