"""Say what is unknown (issue 10, point 8): a missing pixel size or time interval is one warning.

The Swain lab's files record neither the pixel size (it depends on the camera, the objective and
the binning, none of which the Acq file names) nor, in some versions, the interval; an OME-TIFF
without them silently gets 1 µm pixels in most viewers. So the run warns once, naming the ways to
give them: ``--pixel-size UM`` / ``--time-interval S`` or ``pixel_size_um:`` / ``time: {interval_s:}``
in an ``experiment.yml`` next to the position folders.
"""

from __future__ import annotations

import logging
from pathlib import Path

from posdir2ometiff.metadata.model import ExperimentMetadata

log = logging.getLogger(__name__)


def report_unknowns(meta: ExperimentMetadata | None, src: Path) -> list[str]:
    """Warn (once each) about a pixel size or time interval no source gave; return the messages."""
    messages = []
    if meta is None or not meta.pixel_size_um:
        messages.append(
            f"{src}: no pixel size in the metadata, the flags or experiment.yml; the OME-XML has "
            "no PhysicalSizeX/Y (give it with --pixel-size UM or pixel_size_um: in experiment.yml)"
        )
    if meta is None or meta.time is None or not meta.time.interval_s:
        times = "DeltaT comes from the log's times" if meta and meta.plane_times else "no DeltaT"
        messages.append(
            f"{src}: no time interval in the metadata, the flags or experiment.yml; the OME-XML "
            f"has no TimeIncrement and {times} (give it with --time-interval S or "
            "time: {interval_s: S} in experiment.yml)"
        )
    for message in messages:
        log.warning("%s", message)
    return messages
