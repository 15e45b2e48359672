"""Experiment metadata: parsers (plug-ins) producing one typed model, and its HDF5 tables."""

from posdir2ometiff.metadata.model import (
    Channel,
    ExperimentMetadata,
    PlaneTime,
    StagePosition,
    TimeSettings,
    ZSectioning,
    merge,
)
from posdir2ometiff.metadata.plugins import MetadataError, MetadataParser, load_metadata

__all__ = [
    "Channel",
    "ExperimentMetadata",
    "PlaneTime",
    "StagePosition",
    "TimeSettings",
    "ZSectioning",
    "merge",
    "MetadataError",
    "MetadataParser",
    "load_metadata",
]
