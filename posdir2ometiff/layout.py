"""Layout discovery: which position folders exist and which file holds each (t, c, z) plane.

The lab's software writes one folder per microscope position (``pos001/`` ...) holding one 2D image
per plane, named ``{prefix}_{t}_{c}_{z}.png``. This module turns such a folder into a
:class:`PositionLayout`: the sorted timepoints, channels and z-sections, and a map from 0-based
(t, c, z) indices to files. It reads no pixels; it only names files, so it is cheap to run on a
whole experiment before any conversion starts, and every problem it finds (duplicates, files that
match no pattern) is reported with the file's name.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from posdir2ometiff.metadata.model import PlaneTime

logger = logging.getLogger(__name__)

#: ``{prefix}_{t}_{c}_{z}.png|tif|tiff``: t and z numeric, c anything without an underscore.
DEFAULT_PATTERN = r"^(?P<prefix>.+)_(?P<t>\d+)_(?P<c>[^_]+)_(?P<z>\d+)\.(?i:png|tiff?)$"
DEFAULT_POSITIONS = "pos*"


class LayoutError(ValueError):
    """The experiment folder cannot be mapped to planes (the message names the file or folder)."""


class DuplicatePlaneError(LayoutError):
    """Two files claim the same (t, c, z) plane of one position."""


class PlaneKey(NamedTuple):
    """0-based indices of one plane in the hypercube.

    A named tuple, not a frozen dataclass: an experiment of the lab's size makes and looks up
    these hundreds of thousands of times on every run (a re-run too), and a tuple is made in
    half the time and hashed in C (a dictionary lookup 0.11 against 0.54 µs)."""

    t: int
    c: int
    z: int


@dataclass
class PositionLayout:
    """The planes of one position folder, indexed the way they land in the OME-TIFF."""

    name: str
    folder: Path
    #: Raw timepoint numbers from the file names, sorted; index i is OME TheT = i.
    t_values: list[int]
    #: Channel names in output order (the metadata's channel table first, then the rest).
    channels: list[str]
    #: Raw z numbers from the file names, sorted; index i is OME TheZ = i.
    z_values: list[int]
    files: dict[PlaneKey, Path] = field(default_factory=dict)
    #: Files in the folder that did not match the pattern (already warned about).
    unmatched: list[Path] = field(default_factory=list)
    #: Why this position cannot be converted (e.g. duplicate planes); None when it can.
    error: str | None = None

    @property
    def size_t(self) -> int:
        return len(self.t_values)

    @property
    def size_c(self) -> int:
        return len(self.channels)

    @property
    def size_z(self) -> int:
        return len(self.z_values)

    @property
    def plane_count(self) -> int:
        return self.size_t * self.size_c * self.size_z

    def plane_keys(self) -> Iterator[PlaneKey]:
        """All (t, c, z) in OME XYZCT order (z fastest, then c, then t): the TIFF IFD order."""
        for t in range(self.size_t):
            for c in range(self.size_c):
                for z in range(self.size_z):
                    yield PlaneKey(t, c, z)

    def missing(self) -> list[PlaneKey]:
        """Planes of the hypercube that no file provides (written as zeros)."""
        if len(self.files) == self.plane_count:  # every key is in the hypercube: none missing
            return []
        return [k for k in self.plane_keys() if k not in self.files]

    def describe(self, key: PlaneKey) -> str:
        """Human-readable plane label with the file-name values, e.g. ``t=3 c=GFP z=2``."""
        return f"t={self.t_values[key.t]} c={self.channels[key.c]} z={self.z_values[key.z]}"


def find_position_folders(src: Path, positions: str = DEFAULT_POSITIONS) -> list[Path]:
    """Sub-folders of ``src`` whose name matches the glob ``positions`` (case-insensitive), sorted."""
    if not src.is_dir():
        raise LayoutError(f"{src}: not a folder")
    pat = re.compile(fnmatch.translate(positions), re.IGNORECASE)
    return sorted(p for p in src.iterdir() if p.is_dir() and pat.match(p.name))


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """Compile a user plane pattern and check it has the named groups t, c and z."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise LayoutError(f"--pattern {pattern!r} is not a regular expression: {exc}") from None
    missing = {"t", "c", "z"} - set(rx.groupindex)
    if missing:
        raise LayoutError(
            f"--pattern {pattern!r} lacks the named group(s) {', '.join(sorted(missing))} "
            "(use (?P<t>...), (?P<c>...), (?P<z>...))"
        )
    return rx


def _number(value: str, what: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError:
        raise LayoutError(f"{path}: {what} {value!r} is not an integer") from None


def _require_regular_file(path: Path) -> None:
    """A name that matches the plane pattern must be a regular file (or a link to one): reading a
    FIFO would block forever, a folder or device is no image, and skipping it silently would
    drop a plane without a word."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise LayoutError(
            f"{path}: a link to nothing (broken symbolic link) under a plane's name"
        ) from None
    except OSError as exc:
        raise LayoutError(f"{path}: cannot be examined ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        kind = ("a folder" if stat.S_ISDIR(mode) else "a named pipe (FIFO)" if stat.S_ISFIFO(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "a device" if stat.S_ISCHR(mode)
                or stat.S_ISBLK(mode) else "not a regular file")
        raise LayoutError(f"{path}: {kind} under a plane's name, not an image file")


def printable(text: str) -> str:
    """A file name for messages: bytes that are not UTF-8 (surrogate escapes) shown as ``\\xNN``."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _is_file(entry: os.DirEntry[str]) -> bool:
    """A regular file, or a link to one (``DirEntry.is_file``: the type the directory gave,
    a ``stat`` only for a link); an entry that vanished meanwhile is none."""
    try:
        return entry.is_file()
    except OSError:
        return False


def listing(folder: Path) -> tuple[list[os.DirEntry[str]], Callable[[str], Path]]:
    """A folder's entries sorted as its Paths sort, and how to make an entry's Path.

    ``os.scandir`` gives the names with the directory's file types (no ``stat`` per file where
    the filesystem reports them); sorting by name (``normcase``: Windows ignores case) is the
    Paths' order without building them first: sorting 3,600 Paths made 37,000 pathlib
    comparisons a position, 1.4 s of every run's start for the lab's 20 positions. The child
    Path is made without parsing its name again, as ``Path.iterdir`` makes them (0.7 against
    3.8 µs a file; pathlib's own helper, where this Python's pathlib has it).
    """
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: os.path.normcase(e.name))
    return entries, getattr(folder, "_make_child_relpath", folder.joinpath)


def _warn_undecodable(folder: Path, names: Sequence[str]) -> None:
    """Names that are not valid UTF-8 are kept byte-exact (``os.fsdecode``'s surrogate escapes;
    the manifest writes them as ``\\udcXX`` escapes), but the user should know: such a name shows
    differently in every tool."""
    bad = [n for n in names if not n.isascii() and printable(n) != n]  # ASCII is UTF-8
    if bad:
        logger.warning(
            "%s: %d file name(s) are not valid UTF-8, e.g. %s; kept byte-exact in the manifest",
            printable(str(folder)), len(bad), printable(bad[0]),
        )


def scan_position(
    folder: Path,
    pattern: str | re.Pattern[str] = DEFAULT_PATTERN,
    channel_order: Sequence[str] = (),
) -> PositionLayout:
    """Map the files of one position folder to plane indices.

    ``channel_order`` (from the metadata's channel table) fixes the order of channels, matched
    case-insensitively; channels present in the files but not in the table are appended in sorted
    order with a warning, because a silent reorder would mislabel channels. Channels of the table
    with no file in this folder are left out here; :func:`discover` then gives every position of
    an experiment the same channels. Non-matching files are warned about by name. Two files for
    one plane raise :class:`DuplicatePlaneError` naming both.
    """
    rx = compile_pattern(pattern) if isinstance(pattern, str) else pattern
    raw: dict[tuple[int, str, int], Path] = {}
    unmatched: list[Path] = []
    # Channel names are matched case-insensitively everywhere (metadata tables, other
    # positions), so "GFP" and "gfp" are one channel: the first spelling is kept, and two files
    # for one plane that differ only in case are duplicates, never one silently dropped.
    spelling: dict[str, str] = {}
    try:
        entries, child = listing(folder)
    except OSError as exc:
        raise LayoutError(f"{folder}: cannot be read ({exc.strerror or exc})") from None
    _warn_undecodable(folder, [e.name for e in entries])
    for entry in entries:
        name = entry.name
        if name.startswith("."):
            continue
        m = rx.match(name)
        if m is None:
            if _is_file(entry):
                unmatched.append(child(name))
            continue
        path = child(name)
        if not _is_file(entry):
            _require_regular_file(path)  # raises, saying what it is instead
        t_text, c_name, z_text = m.group("t", "c", "z")
        t = _number(t_text, "timepoint", path)
        z = _number(z_text, "z-section", path)
        c = spelling.setdefault(c_name.lower(), c_name)
        if c != c_name:
            logger.warning("%s: channel %r taken as %r (channel names ignore case)",
                           path, c_name, c)
        key = (t, c, z)
        if key in raw:
            raise DuplicatePlaneError(
                f"{raw[key]} and {path}: two files for plane t={t} c={c} z={z}"
                + (" (channel names ignore case)" if raw[key].name != path.name
                   and raw[key].name.lower() == path.name.lower() else "")
            )
        raw[key] = path
    if unmatched:
        shown = ", ".join(p.name for p in unmatched[:10])
        more = (f" and {len(unmatched) - 10} more (all listed in the manifest)"
                if len(unmatched) > 10 else "")
        logger.warning(
            "%s: %d file(s) do not match the plane pattern and are not converted: %s%s",
            folder, len(unmatched), shown, more,
        )

    file_channels = sorted({c for _, c, _ in raw})
    channels: list[str] = []
    by_lower = {c.lower(): c for c in file_channels}
    for name in channel_order:
        c = by_lower.get(name.lower())
        if c is not None and c not in channels:
            channels.append(c)
    extra = [c for c in file_channels if c not in channels]
    if channel_order and extra:
        logger.warning(
            "%s: channel(s) %s are not in the metadata's channel table; appended after %s",
            folder, ", ".join(extra), ", ".join(channels) or "none",
        )
    channels += extra

    t_values = sorted({t for t, _, _ in raw})
    z_values = sorted({z for _, _, z in raw})
    t_index = {v: i for i, v in enumerate(t_values)}
    z_index = {v: i for i, v in enumerate(z_values)}
    c_index = {c: i for i, c in enumerate(channels)}
    files = {PlaneKey(t_index[t], c_index[c], z_index[z]): p for (t, c, z), p in raw.items()}
    return PositionLayout(
        name=folder.name,
        folder=folder,
        t_values=t_values,
        channels=channels,
        z_values=z_values,
        files=files,
        unmatched=unmatched,
    )


def discover(
    src: Path,
    positions: str = DEFAULT_POSITIONS,
    pattern: str = DEFAULT_PATTERN,
    channel_order: Sequence[str] = (),
    log_timepoints: Sequence[int] = (),
    z_count: int | None = None,
) -> list[PositionLayout]:
    """Scan every position folder of an experiment (see :func:`scan_position`).

    t and z are then numbered from the experiment (:func:`unify_numbering`), with the log's
    time-point numbers ``log_timepoints`` and the Acq file's section count ``z_count`` if known.

    Raises :class:`LayoutError` when no position folder matches, because converting nothing
    successfully would hide a wrong ``--positions`` glob. Position folders without any matching
    plane are skipped with a warning. A position whose files cannot be mapped (duplicates) is
    returned with ``error`` set, so the other positions still convert.
    """
    src = Path(src)
    rx = compile_pattern(pattern)
    folders = find_position_folders(src, positions)
    _warn_undecodable(src, [f.name for f in folders])
    if not folders:
        raise LayoutError(f"{src}: no position folder matches {positions!r}"
                          + _looks_like_a_position(src, positions, rx))
    layouts = []
    empty: list[PositionLayout] = []
    for folder in folders:
        try:
            layout = scan_position(folder, rx, channel_order)
        except LayoutError as exc:
            # One broken position must not stop the others: the converter reports it as failed.
            layout = PositionLayout(folder.name, folder, [], [], [], error=str(exc))
            layouts.append(layout)
            continue
        if not layout.files:
            logger.warning("%s: no plane file matches the pattern; position skipped", folder)
            empty.append(layout)
            continue
        layouts.append(layout)
    if not layouts:
        # Converting nothing "successfully" would hide a wrong --pattern.
        example = next((p.name for lay in empty for p in lay.unmatched), None)
        raise LayoutError(
            f"{src}: the plane pattern matches no file in {len(folders)} position folder(s)"
            + (f" (e.g. {printable(example)!r} does not match {pattern!r})" if example else
               " (they hold no files)")
        )
    unify_numbering(layouts, log_timepoints, z_count)
    return unify_channels(layouts, channel_order)


def check_output_folder(
    src: Path, out: Path, positions: str = DEFAULT_POSITIONS, pattern: str = DEFAULT_PATTERN
) -> None:
    """Refuse an output folder inside a position folder, or one that is a position with planes.

    The OME-TIFFs would land among the planes, and the position would be taken out of the run.
    (OUT may match the positions glob, e.g. ``SRC/pos_converted``, as long as it holds no plane.)
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    rx = compile_pattern(pattern)
    for folder in find_position_folders(src, positions):
        folder = folder.resolve()
        has_planes = out == folder and any(rx.match(p.name) for p in folder.iterdir())
        if has_planes or (out != folder and out.is_relative_to(folder)):
            raise LayoutError(
                f"{out}: the output folder is inside position folder {folder}; "
                "choose a folder outside the positions (e.g. next to SRC)"
            )


def unify_numbering(
    layouts: list[PositionLayout],
    log_timepoints: Sequence[int] = (),
    z_count: int | None = None,
) -> list[PositionLayout]:
    """Number t and z from the experiment, not from each folder (changes ``layouts`` in place).

    Ranking each folder's own timepoints would shift every plane of a position that missed the
    experiment's first timepoint (a stage time-out, a focus failure) to an earlier time. So a
    plane's TheT is its file's timepoint number minus the experiment's first (the smallest
    number in any position's files or in the log's "Time point_N" blocks), and every position
    gets the experiment's SizeT (up to the last number seen) and SizeZ (the z numbers seen, at
    least ``z_count`` sections from the first); planes no file provides are missing planes.
    A file whose timepoint has no block in the log is warned about (once per position).
    """
    usable = [lay for lay in layouts if lay.error is None and lay.files]
    if not usable:
        return layouts
    raw_t = {v for lay in usable for v in lay.t_values}
    raw_z = {v for lay in usable for v in lay.z_values}
    first_t = min(raw_t | set(log_timepoints))
    last_t = max(raw_t | set(log_timepoints))
    first_z, last_z = min(raw_z), max(raw_z)
    if z_count:
        last_z = max(last_z, first_z + z_count - 1)
    t_values = list(range(first_t, last_t + 1))
    z_values = list(range(first_z, last_z + 1))
    logged = set(log_timepoints)
    for lay in usable:
        if logged and (unlogged := sorted(set(lay.t_values) - logged)):
            logger.warning(
                "%s: timepoint(s) %s of the file names have no 'Time point' block in the log; "
                "their planes have no acquisition time from it",
                lay.folder, ", ".join(map(str, unlogged[:10])),
            )
        old_t, old_z = lay.t_values, lay.z_values
        # Index i becomes old_t[i] - first_t: the same index where the folder's numbers start
        # the experiment's and have no gap (most positions), so the keys are kept as they are.
        if old_t != t_values[:len(old_t)] or old_z != z_values[:len(old_z)]:
            lay.files = {
                PlaneKey(old_t[k.t] - first_t, k.c, old_z[k.z] - first_z): p
                for k, p in lay.files.items()
            }
        lay.t_values, lay.z_values = list(t_values), list(z_values)
    return layouts


def _looks_like_a_position(src: Path, positions: str, rx: re.Pattern[str]) -> str:
    """A hint when SRC is itself a position folder (named like one, or holding plane files):
    the converter wants the experiment folder above it."""
    named = re.match(fnmatch.translate(positions), src.name, re.IGNORECASE) is not None
    has_planes = any(rx.match(p.name) for p in src.iterdir() if p.is_file())
    if not (named or has_planes):
        return ""
    return (f"; {src.name!r} looks like a position folder itself: give the experiment folder "
            f"that holds it, {src.resolve().parent}")


def unify_channels(
    layouts: list[PositionLayout], channel_order: Sequence[str] = ()
) -> list[PositionLayout]:
    """Give every position the same channels, in the same order (changes ``layouts`` in place).

    A channel imaged in some positions but with no file at all in another (a skipped channel, a
    crashed acquisition, files deleted) would otherwise shift the channel indices of that
    position: its C=2 would be GFP here and mCherry there, and a script or an OMERO rendering
    setting applied across the dataset would mislabel it. So the hypercube is the same for all
    positions: the union of the channels (ordered as :func:`scan_position` orders them, matched
    case-insensitively, spelt as in the first position that has them), and a position's absent
    channel is kept with all its planes missing (written as zeros, listed, warned about).
    Channels of the metadata table with no file in any position stay out: nothing was acquired.
    """
    usable = [lay for lay in layouts if lay.error is None]
    spelling: dict[str, str] = {}
    for lay in usable:
        for c in lay.channels:
            spelling.setdefault(c.lower(), c)
    union: list[str] = []
    for name in channel_order:
        c = spelling.get(name.lower())
        if c is not None and c not in union:
            union.append(c)
    union += sorted(c for c in spelling.values() if c not in union)
    index = {c.lower(): i for i, c in enumerate(union)}
    for lay in usable:
        if [c.lower() for c in lay.channels] == [c.lower() for c in union]:
            lay.channels = list(union)
            continue
        absent = [c for c in union if c.lower() not in {x.lower() for x in lay.channels}]
        if absent:
            logger.warning(
                "%s: no file for channel(s) %s, which other positions have; kept as missing "
                "planes (zeros) so every position has the same channels", lay.folder,
                ", ".join(absent),
            )
        old = lay.channels
        lay.files = {
            PlaneKey(k.t, index[old[k.c].lower()], k.z): p for k, p in lay.files.items()
        }
        lay.channels = list(union)
    return layouts


def split_missing(
    layout: PositionLayout, plane_times: Sequence[PlaneTime] = ()
) -> tuple[list[PlaneKey], list[tuple[PlaneKey, str]]]:
    """The position's missing planes, split by whether the log says why.

    Returns (missing for no recorded reason, [(not captured, the log's reason)]): a plane is
    *not captured* when the log's record of that position, timepoint and channel carries the
    software's "NO IMAGE CAPTURED" warning (``PlaneTime.not_captured``); every z of that channel's
    stack shares the reason. Only planes with no file are considered: a file on disk is data.
    """
    low = layout.name.lower()
    reasons = {
        (pt.t, pt.channel.lower()): pt.not_captured
        for pt in plane_times
        if pt.not_captured and pt.position.lower() == low
    }
    missing: list[PlaneKey] = []
    not_captured: list[tuple[PlaneKey, str]] = []
    for key in layout.missing():
        reason = reasons.get((layout.t_values[key.t] - 1, layout.channels[key.c].lower()))
        if reason:
            not_captured.append((key, reason))
        else:
            missing.append(key)
    return missing, not_captured


def absent_positions(
    src: Path, names: Sequence[str], positions: str = DEFAULT_POSITIONS
) -> list[str]:
    """Positions of the metadata's points table (``names``) with no folder in ``src``, in order.

    Only names the ``--positions`` glob selects count (a run restricted to some positions does
    not report the others as absent); matched case-insensitively, like the folders.
    """
    pat = re.compile(fnmatch.translate(positions), re.IGNORECASE)
    have = {p.name.lower() for p in Path(src).iterdir() if p.is_dir()}
    return [n for n in dict.fromkeys(names) if pat.match(n) and n.lower() not in have]


def warn_not_captured(position: str, items: Sequence[dict]) -> None:
    """One warning line per position for its not-captured planes (manifest items with reasons)."""
    if not items:
        return
    reasons = sorted({str(m.get("reason")) for m in items})
    labels = [str(m.get("label")) for m in items]
    more = f" and {len(labels) - 5} more" if len(labels) > 5 else ""
    logger.warning(
        "%s: %d plane(s) the log says were not captured (%s), written as zeros and listed as "
        "not_captured_planes / 'not captured plane' key-value pairs: %s%s",
        position, len(labels), "; ".join(reasons[:3]), "; ".join(labels[:5]), more,
    )
