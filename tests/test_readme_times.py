"""benchmarks/readme_times.py, which measures every time the README quotes: its cases are the README's rows."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("readme_times", ROOT / "benchmarks" / "readme_times.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_times"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_row_of_how_long_things_take_names_a_case_of_the_script_and_every_case_a_row() -> None:
    script = _script()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## How long things take") :]
    section = section[: section.index("\n## ", 3)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| what")]
    named = {name for row in rows for name in re.findall(r"`([a-z0-9_]+)`", row.split(" | ")[0])}
    assert named == set(script.BY_NAME)  # no row without its case, no case without its row
    unmeasured = [row for row in rows if not re.search(r"`[a-z0-9_]+`", row.split(" | ")[0])]
    assert len(unmeasured) == 1 and "not run" in unmeasured[0]  # the paper reproduction: an estimate, said so


def test_a_case_runs_after_the_case_whose_results_it_reads() -> None:
    script = _script()
    assert [case.name for case in script.plan(["check"])] == ["smoke_reproduce", "check"]
    assert [case.name for case in script.plan(["report", "suite"])] == ["suite", "smoke_reproduce", "report"]
    assert script.clock(47.4) == "47 s" and script.clock(829) == "13 min 49 s" and script.clock(3725) == "1 h 02 min"
