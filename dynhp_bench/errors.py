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
