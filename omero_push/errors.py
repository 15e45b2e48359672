"""Typed errors of omero_push.

The library raises these; only ``cli.py`` turns them into one line and an exit status. Every message
says what went wrong and what to do next, and none ever carries a password: messages are built from
host, port, user and object names only.
"""

from __future__ import annotations


class PushError(Exception):
    """Base class: anything omero_push reports to its user as one line."""

    exit_code = 1


class InputError(PushError):
    """A path, manifest or OME-TIFF given to the push cannot be used."""

    exit_code = 2


class ConfigError(PushError):
    """The YAML config or the command-line options are wrong or incomplete."""

    exit_code = 2


class AuthenticationError(PushError):
    """The server refused the user name / password or the session key."""

    exit_code = 3


class ServerUnreachableError(PushError):
    """No OMERO answered at host:port (unknown host, nothing listening, firewall)."""

    exit_code = 4


class NoPermissionError(PushError):
    """The user may not write to the target group, project or dataset."""

    exit_code = 5


class ConnectionLostError(PushError):
    """The connection dropped and did not come back within the retries; re-run to resume."""

    exit_code = 6


class ServerError(PushError):
    """The server rejected a call for another reason (its message is kept)."""

    exit_code = 7


class FolderInUseError(PushError):
    """Another push, or a converter, is working on the output folder (its lock is taken)."""

    exit_code = 75  # sysexits.h EX_TEMPFAIL, as posdir2ometiff's lock.EXIT_LOCKED


class ClientMissingError(PushError):
    """omero-py or zeroc-ice is not installed here (exit 1 means "some files were not pushed")."""

    exit_code = 8


class TablesUnavailableError(PushError):
    """The OMERO.tables service is off; the caller falls back to attaching the HDF5 file."""
