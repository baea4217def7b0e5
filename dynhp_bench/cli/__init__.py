"""The command line: `dynhp-bench` (`main`), one module per command group, and the terminal views."""

from dynhp_bench.cli.commands import app, main

__all__ = ["app", "main"]
