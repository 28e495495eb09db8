"""One base class for the mistakes a user can fix, so the CLI can tell them from bugs.

The CLI prints a :class:`VpreferError` as one line and exits non-zero; anything
else (KeyError, RuntimeError, ...) is a bug and keeps its traceback. Subclasses
also derive from the built-in class callers caught before (``ValueError``,
``FileNotFoundError``, ``RuntimeError``), so existing ``except`` clauses keep
working. Messages pass through the redactor: an error names a variable, never
the secret in it, even when a key was pasted into the wrong place.
"""

from __future__ import annotations

from vprefer.secrets import redact


class VpreferError(Exception):
    """A failure the user can act on: bad input, a missing file, a bad recipe, a service that refuses."""

    def __str__(self) -> str:
        return redact(super().__str__())


class InputError(VpreferError, ValueError):
    """Bad input: an option, a file's content, a table that lacks what the command needs."""


class MissingError(VpreferError, FileNotFoundError):
    """A file or folder the user named is not there (or is not what it should be)."""


class ServiceError(VpreferError, RuntimeError):
    """A server the command talks to is down, refuses, or lost what we stored there."""


class DamagedError(VpreferError, ValueError):
    """A file of the run exists but cannot be read (torn copy, full disk): the message names the file."""
