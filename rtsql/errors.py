"""Typed errors of the rtsql library.

The library raises these and never prints or exits; the CLI turns every ``RtsqlError`` into
``Error: <message>`` with exit code 1. Messages say what to do next.
"""


class RtsqlError(Exception):
    """Base class of every error that is the user's to fix (bad input, wrong state)."""


class MigrationError(RtsqlError):
    """The database schema cannot be brought to the version this code expects."""


class DatabaseLocked(RtsqlError):
    """Another process holds the database file (or a refresh/tail lock)."""


class BadEventFile(RtsqlError):
    """An input file cannot be read at all (its rows could not even be rejected one by one)."""


class InputPathError(RtsqlError):
    """A path given on the command line does not exist or is not usable."""


class UnknownSetting(RtsqlError):
    """A setting name that is not in the registry."""


class InvalidSetting(RtsqlError):
    """A setting value that does not fit its type or range."""


class UnknownUser(RtsqlError):
    """A user id that has no events."""


class UnknownItem(RtsqlError):
    """An item id that is neither in the events nor in the catalog."""


class ExternalModel(RtsqlError):
    """A local full refresh would drop events a Spark build read from outside the database."""


class ModelError(RtsqlError):
    """The stored models break a rule rtsql keeps when it writes them (a full refresh fixes)."""
