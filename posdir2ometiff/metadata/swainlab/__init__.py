"""Parser for the Swain lab's acquisition software (MATLAB "multiDGUI"): ``*Acq.txt`` + ``*log.txt``.

One module per job:

- :mod:`.text` — decoding (UTF-8, else cp1252), bounded line reading, dates, numbers, typed tables;
- :mod:`.acq` — the ``*Acq.txt`` settings file (channels, z, time, points, flow control);
- :mod:`.log_header` — the log's "Experiment details" header;
- :mod:`.log_captures` — the log's time-point / position / channel blocks (plane times);
- :mod:`.logfile` — streams a log through the two readers above;
- :mod:`.parser` — the :class:`SwainLabParser` plug-in joining both files into the model;
- :mod:`.light_path` — excitation/emission wavelengths from the light path's filters;
- :mod:`.single_log` — the newer software's single ``.log`` (:class:`SwainLabLogParser`).

A malformed line is logged as a warning with ``file:line`` and skipped; only a folder with neither
file is an error.
"""

from posdir2ometiff.metadata.swainlab.acq import parse_acq
from posdir2ometiff.metadata.swainlab.logfile import parse_log
from posdir2ometiff.metadata.swainlab.parser import SwainLabParser, build_description
from posdir2ometiff.metadata.swainlab.text import MAX_LINE_BYTES, parse_datetime

__all__ = [
    "MAX_LINE_BYTES",
    "SwainLabParser",
    "build_description",
    "parse_acq",
    "parse_datetime",
    "parse_log",
]
