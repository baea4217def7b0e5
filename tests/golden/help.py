"""What the help golden test holds (tests/test_golden.py): the `--help` text of every command at 100 columns.

Regenerate only when a change alters a command's options or help on purpose, and say so in the change:
``python -m tests.golden.help > tests/golden/help.json``.
"""

from __future__ import annotations

import json
import os
import sys
from unittest import mock

from typer.testing import CliRunner

from dynhp_bench.cli.commands import app

WIDTH = 100


def commands() -> list[str]:
    """Every command of the CLI, hidden ones too, in registration order ("" is the root)."""
    return ["", *(info.name or "" for info in app.registered_commands)]


def help_texts() -> dict[str, str]:
    """Each command's `--help` as a user sees it in a terminal `WIDTH` columns wide."""
    runner = CliRunner()
    texts = {}
    environment = {"COLUMNS": str(WIDTH), "TERMINAL_WIDTH": str(WIDTH), "NO_COLOR": "1", "DYNHP_STORAGE": ""}
    with mock.patch.dict(os.environ, environment):
        for name in commands():
            argv = [name, "--help"] if name else ["--help"]
            result = runner.invoke(app, argv, env=environment, terminal_width=WIDTH)
            texts[name or "(root)"] = result.output
    return texts


if __name__ == "__main__":
    json.dump(help_texts(), sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")
