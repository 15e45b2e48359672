"""Errors of a conversion: one class per kind, each message naming the file and what is wrong."""

from __future__ import annotations


class ConversionError(ValueError):
    """A position cannot be converted; the message names the file and what is wrong."""


class PlaneError(ConversionError):
    """A plane file is unreadable, truncated, or of another size, dtype or sample count."""


class ClusterError(ConversionError):
    """The Dask scheduler cannot be reached, the cluster cannot be started, or it can no longer
    run the positions (every Slurm job it had ended, its jobs were refused)."""
