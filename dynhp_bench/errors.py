"""The one exception family a user can cause; `cli.py` turns any of them into one line and exit status 2."""

from decimal import Decimal

SHOWN_CHARS = 60  # the most of a value an error message echoes


def shown(value: object, *, limit: int = SHOWN_CHARS) -> str:
    """`repr(value)` for an error message, cut to its first `limit` characters, then "…" and the value's length: a
    million-character setting is named, not echoed whole, and an integer of thousands of digits by its magnitude."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**SHOWN_CHARS:
        return f"{Decimal(value):.3e}"  # repr() refuses an int of more than 4,300 digits
    try:
        text = repr(value)
    except ValueError:  # an int of more than 4,300 digits inside a list
        return f"({type(value).__name__} too large to show)"
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, str) else len(text)
    return f"{text[:limit]}… ({length:,} characters{'' if isinstance(value, str) else ' as written'})"


class DynhpError(Exception):
    """Base of every error a user can cause: a bad setting, missing data, unreadable results, storage."""


class SettingsError(DynhpError):
    """A setting has a value outside what is accepted (the message names the value and what is expected)."""


class DataError(DynhpError):
    """A dataset is missing, unreadable or cannot be downloaded."""


class ResultsError(DynhpError):
    """A results folder or run folder cannot be written or read."""


class StorageError(DynhpError):
    """A study storage cannot be reached or is malformed."""


class Interrupted(Exception):  # noqa: N818 - an event, not an error: a user asked the run to stop
    """A run stopped on SIGINT or SIGTERM after writing a checkpoint; `exit_status` is 130 or 143."""

    def __init__(self, signal_name: str, exit_status: int, run_dir: str) -> None:
        super().__init__(f"{signal_name} received")
        self.signal_name = signal_name
        self.exit_status = exit_status
        self.run_dir = run_dir
