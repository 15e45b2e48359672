"""The experiment-metadata model: the one contract between parsers, the OME builder and the pusher.

Every metadata parser (the lab's Acq/log files, the YAML sidecar, a user's plug-in) returns an
:class:`ExperimentMetadata`; :func:`merge` layers several of them (later wins) and the CLI's overrides
go last. The OME builder turns it into OME-XML, the table writer into HDF5, and omero_push reads back
what landed in the OME-XML. Keeping one typed model (rather than dicts merged ad hoc) is what lets a
new parser be added without touching the builder.

Units are fixed by field name so nobody has to guess: ``_um`` micrometres, ``_s`` seconds, ``_ms``
milliseconds, ``_nm`` nanometres. ``None`` always means "not recorded" (never 0).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime

import pandas as pd


@dataclass
class Channel:
    """One acquisition channel, as recorded in the channels table (and light-path section)."""

    name: str
    exposure_ms: float | None = None
    camera_mode: str | None = None
    gain: float | None = None
    voltage: float | None = None
    #: Camera binning as OME spells it ("1x1", "2x2", "4x4", "8x8") or as recorded.
    binning: str | None = None
    light_path: str | None = None
    #: "#RRGGBB" or None; the OME builder picks a default by name when None.
    color: str | None = None
    excitation_wavelength_nm: float | None = None
    emission_wavelength_nm: float | None = None
    #: Any other column of the channels table, kept as text (e.g. "Skip", "Z sect.").
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class ZSectioning:
    count: int | None = None
    spacing_um: float | None = None
    #: How the software sectioned (its own code or name, e.g. "1", "2", "PIFOC").
    method: str | None = None
    #: Where the first slice lies relative to the recorded stage Z, in z steps: -(count-1)/2 for a
    #: stack centred on it, 0 for a stack that starts there; None when unknown (taken as 0).
    first_slice_steps: float | None = None
    extra: dict[str, str] = field(default_factory=dict)


@dataclass
class TimeSettings:
    interval_s: float | None = None
    timepoints: int | None = None
    duration_s: float | None = None


@dataclass
class StagePosition:
    """One microscope position (a ``posNNN`` folder) from the positions table."""

    name: str
    x_um: float | None = None
    y_um: float | None = None
    z_um: float | None = None
    group: str | None = None
    #: Per-channel exposure at this position, by channel name (overrides Channel.exposure_ms).
    exposure_ms: dict[str, float] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlaneTime:
    """When one plane (or one channel stack, z=None) was acquired, read from the log body."""

    position: str
    t: int  # 0-based timepoint index: the log's "Time point_N" block (and file number) minus 1
    channel: str
    time: datetime
    z: int | None = None
    #: Focus drive position the log recorded just before this channel's stack (the stack's
    #: reference point; see ZSectioning.first_slice_steps), in µm; None if not logged.
    drive_z_um: float | None = None
    #: Why the log says this channel was not captured at this position and timepoint (the
    #: software's "NO IMAGE CAPTURED" warning, or a skip); None when nothing was reported.
    not_captured: str | None = None


@dataclass
class ExperimentMetadata:
    """Everything known about one experiment, independent of where it was read from."""

    #: Which parser(s) produced this, e.g. ["swainlab", "yaml"]; recorded in provenance.
    sources: list[str] = field(default_factory=list)
    name: str | None = None
    description: str | None = None
    aim: str | None = None
    authors: list[str] = field(default_factory=list)
    strains: list[str] = field(default_factory=list)
    comments: str | None = None
    tags: list[str] = field(default_factory=list)
    #: Ordered key-value pairs; a key may repeat; values are plain strings (never str(list)).
    key_values: list[tuple[str, str]] = field(default_factory=list)
    #: Named tables (channels, positions, pumps, ...) with real dtypes, written to HDF5.
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    channels: list[Channel] = field(default_factory=list)
    z: ZSectioning | None = None
    time: TimeSettings | None = None
    positions: list[StagePosition] = field(default_factory=list)
    acquisition_start: datetime | None = None
    microscope: str | None = None
    objective: str | None = None
    objective_magnification: float | None = None
    objective_na: float | None = None
    pixel_size_um: float | None = None
    omero_project: str | None = None
    omero_dataset: str | None = None
    plane_times: list[PlaneTime] = field(default_factory=list)
    #: Time-point numbers of the log's blocks ("Time point_N"), the software's own numbering (as
    #: in the file names); empty when no log was read.
    log_timepoints: list[int] = field(default_factory=list)

    def channel(self, name: str) -> Channel | None:
        """The channel called ``name`` (case-insensitive), or None."""
        low = name.lower()
        return next((c for c in self.channels if c.name.lower() == low), None)

    def position(self, name: str) -> StagePosition | None:
        """The stage position called ``name`` (case-insensitive), or None."""
        low = name.lower()
        return next((p for p in self.positions if p.name.lower() == low), None)


def merge(*layers: ExperimentMetadata) -> ExperimentMetadata:
    """Combine metadata from several sources; a later layer wins field by field.

    Scalars: the later non-None value wins. Lists of strings (tags, authors, strains) are united in
    order without repeats; key-value pairs are concatenated (keys may repeat by design). Channels and
    positions are merged by name, field by field, so a YAML sidecar can add a colour or a wavelength
    to a channel the Acq file defined. Tables: later wins by table name.
    """
    out = ExperimentMetadata()
    for layer in layers:
        out.sources += [s for s in layer.sources if s not in out.sources]
        for f in dataclasses.fields(ExperimentMetadata):
            new = getattr(layer, f.name)
            if f.name in ("sources",):
                continue
            if f.name in ("tags", "authors", "strains", "log_timepoints"):
                cur = getattr(out, f.name)
                cur += [v for v in new if v not in cur]
            elif f.name in ("key_values", "plane_times"):
                getattr(out, f.name).extend(new)
            elif f.name == "tables":
                out.tables.update(new)
            elif f.name == "channels":
                out.channels = _merge_named(out.channels, new)
            elif f.name == "positions":
                out.positions = _merge_named(out.positions, new)
            elif f.name in ("z", "time"):
                setattr(out, f.name, _merge_obj(getattr(out, f.name), new))
            elif new is not None:
                setattr(out, f.name, new)
    return out


def _merge_obj(old, new):
    """Field-wise merge of two dataclass instances (new's non-empty values win)."""
    if old is None:
        return dataclasses.replace(new) if new is not None else None
    if new is None:
        return old
    changes = {}
    for f in dataclasses.fields(new):
        v = getattr(new, f.name)
        if isinstance(v, dict):
            changes[f.name] = {**getattr(old, f.name), **v}
        elif v is not None:
            changes[f.name] = v
    return dataclasses.replace(old, **changes)


def _merge_named(old: list, new: list) -> list:
    """Merge lists of named records (channels, positions) by case-insensitive name, keeping order."""
    out = list(old)
    index = {item.name.lower(): i for i, item in enumerate(out)}
    for item in new:
        i = index.get(item.name.lower())
        if i is None:
            index[item.name.lower()] = len(out)
            out.append(item)
        else:
            # The first spelling wins ("GFP" from the Acq file, not "gfp" from a sidecar), so the
            # channel names in the OME-XML match the file names on disk.
            out[i] = dataclasses.replace(_merge_obj(out[i], item), name=out[i].name)
    return out
