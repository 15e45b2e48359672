"""The Swain lab's parser plug-in: finds the Acq/log pair in a folder and joins them into one model."""

from __future__ import annotations

import logging
from pathlib import Path

from posdir2ometiff.metadata.model import Channel, ExperimentMetadata
from posdir2ometiff.metadata.plugins import MetadataError
from posdir2ometiff.metadata.swainlab.acq import _AcqResult, parse_acq
from posdir2ometiff.metadata.swainlab.light_path import set_wavelengths
from posdir2ometiff.metadata.swainlab.logfile import _LogResult, parse_log

log = logging.getLogger(__name__)


def _find(folder: Path, suffix: str) -> list[Path]:
    try:
        return sorted(
            p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffix)
        )
    except OSError:
        return []


def _peek(path: Path, *needles: str) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError:
        return False
    return any(n in head for n in needles)


def build_description(
    aim: str | None,
    comments: str | None,
    authors: list[str],
    strains: list[str],
    details: str | None = None,
) -> str | None:
    """The Image description: what a person browsing OMERO needs to know first."""
    parts = [details] if details else []
    if aim:
        parts.append(f"Aim: {aim}")
    if comments:
        parts.append(f"Comments: {comments}")
    if authors:
        parts.append("Authors: " + ", ".join(authors))
    if strains:
        parts.append("Strains: " + ", ".join(strains))
    return "\n".join(parts) or None


class SwainLabParser:
    """The Swain lab's ``*Acq.txt`` + ``*log.txt`` pair (either alone is accepted, with a warning)."""

    name = "swainlab"
    priority = 0
    supplement = False

    def detect(self, folder: Path) -> bool:
        folder = Path(folder)
        return any(_peek(p, "Channels:", "Points:") for p in _find(folder, "acq.txt")) or any(
            _peek(p, "Experiment details", "Microscope name is", "Experiment started at")
            for p in _find(folder, "log.txt")
        )

    def parse(self, folder: Path) -> ExperimentMetadata:
        folder = Path(folder)
        acqs, logs = _find(folder, "acq.txt"), _find(folder, "log.txt")
        if not acqs and not logs:
            raise MetadataError(f"{folder}: no *Acq.txt or *log.txt file found")
        acq_path = acqs[0] if acqs else None
        prefix = acq_path.name[: -len("acq.txt")].rstrip("_") if acq_path else None
        log_path = None
        if logs:
            same = [p for p in logs if prefix and p.name.lower().startswith(prefix.lower())]
            log_path = (same or logs)[0]
        if len(acqs) > 1 or len(logs) > 1:
            log.warning(
                "%s: several Acq/log files; using %s and %s",
                folder,
                acq_path and acq_path.name,
                log_path and log_path.name,
            )
        if acq_path is None:
            log.warning(
                "%s: no *Acq.txt file; channels, positions and z/time settings unknown", folder
            )
        if log_path is None:
            log.warning("%s: no *log.txt file; description, tags and plane times unknown", folder)

        acq = parse_acq(acq_path) if acq_path else _AcqResult()
        lg = parse_log(log_path, [c.name for c in acq.channels]) if log_path else _LogResult()

        channels = acq.channels
        for ch_name, text in lg.light_paths.items():
            ch = next((c for c in channels if c.name.lower() == ch_name.lower()), None)
            if ch is None:
                ch = Channel(name=ch_name)
                channels.append(ch)
            ch.light_path = text
            set_wavelengths(ch)

        kv: list[tuple[str, str]] = []
        if lg.microscope:
            kv.append(("Microscope", lg.microscope))
        if lg.aim:
            kv.append(("Aim", lg.aim))
        kv += [("Strain", s) for s in lg.strains]
        kv += [("Author", a) for a in lg.authors]
        if lg.comments:
            kv.append(("Comments", lg.comments))
        if lg.details:
            kv.append(("Experiment details", lg.details))
        if lg.omero_project:
            kv.append(("Project", lg.omero_project))
        if lg.date:
            kv.append(("Date", lg.date.date().isoformat()))
        kv += [(f"Light path {ch.name}", ch.light_path) for ch in channels if ch.light_path]
        kv += lg.key_values + acq.key_values + lg.provenance

        name = prefix or (log_path.name[: -len("log.txt")].rstrip("_") if log_path else None)
        start = lg.start or (min(p.time for p in lg.plane_times) if lg.plane_times else lg.date)
        return ExperimentMetadata(
            sources=[self.name],
            name=name or folder.name,
            description=build_description(lg.aim, lg.comments, lg.authors, lg.strains, lg.details),
            aim=lg.aim,
            authors=lg.authors,
            strains=lg.strains,
            comments=lg.comments,
            tags=lg.tags,
            key_values=kv,
            tables=acq.tables,
            channels=channels,
            z=acq.z,
            time=acq.time,
            positions=acq.positions,
            acquisition_start=start,
            microscope=lg.microscope,
            omero_project=lg.omero_project,
            plane_times=lg.plane_times,
            log_timepoints=lg.timepoints,
        )
