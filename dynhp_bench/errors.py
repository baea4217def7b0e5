"""The one exception family a user can cause; `cli.py` turns any of them into one line and exit status 2."""


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
