"""Provenance: how an image in OMERO came to be, and how a re-run recognises it.

Every image the push creates ends with ONE MapAnnotation written LAST, after pixels, channels and
all other annotations.  Its presence means "this image is complete"; its ``source_sha1`` (and
``series``) key identifies the source.  So a push killed midway leaves no image that looks done.

* With provenance on: namespace :data:`PROVENANCE_NS`, pairs tool, tool_version, mode, source_file,
  source_sha1, source_size, series, pushed_at, and — for converter output — converter, its
  version, options and the position's source folder.
* With ``--no-provenance``: only a checksum marker in :data:`MARKER_NS` (``source_sha1`` and
  ``series``), the minimum a re-run needs to avoid duplicates.  Nothing about tools, options,
  paths or dates is written.

An image being built carries :func:`pending_description` as its description (set atomically by
``IPixels.createImage`` / the import settings), so an interrupted image is found again with a plain
exact-match query (:func:`omero_push.annotate.find_images_by_description`) and dealt with instead of
duplicated or orphaned.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from omero_push.ometiff import ImageMeta, PushItem

PROVENANCE_NS = "posdir2ometiff/omero_push/provenance"
MARKER_NS = "posdir2ometiff/omero_push/checksum"
RECEIPT_NAMESPACES = (PROVENANCE_NS, MARKER_NS)
PENDING_PREFIX = "omero-push: incomplete upload of "


def pending_description(sha1: str, series: int | None = None) -> str:
    """Description an image carries while being built; exact-match searchable.

    Pixels mode creates one image at a time (``series`` given); an import creates all images of a
    file at once, so they share the file-level marker (``series=None``).
    """
    return f"{PENDING_PREFIX}{sha1}" + ("" if series is None else f" series {series}")


def receipt_key(sha1: str, series: int) -> tuple[str, int]:
    return (sha1, series)


def receipt_pairs(
    item: PushItem,
    image: ImageMeta,
    *,
    mode: str,
    provenance: bool,
    tool_version: str,
    now: _dt.datetime | None = None,
) -> tuple[str, list[tuple[str, str]]]:
    """(namespace, ordered pairs) of the annotation that marks ``image`` as complete."""
    if not provenance:
        return MARKER_NS, [("source_sha1", item.sha1), ("series", str(image.index))]
    when = (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds")
    pairs: list[tuple[str, str]] = [
        ("tool", "omero_push"),
        ("tool_version", tool_version),
        ("mode", mode),
        ("source_file", item.path.name),
        ("source_sha1", item.sha1),
        ("source_size", str(item.size)),
        ("series", str(image.index)),
        ("pushed_at", when),
    ]
    conv = item.conversion or {}
    if conv.get("tool"):
        pairs.append(("converter", str(conv["tool"])))
    if conv.get("version"):
        pairs.append(("converter_version", str(conv["version"])))
    if conv.get("created"):
        pairs.append(("converted_at", str(conv["created"])))
    if conv.get("position"):
        pairs.append(("position", str(conv["position"])))
    if conv.get("source") is not None:
        pairs.append(("conversion_source", _compact(conv["source"])))
    if conv.get("options") is not None:
        pairs.append(("conversion_options", _compact(conv["options"])))
    if conv.get("missing_planes"):
        pairs.append(("missing_planes", str(conv["missing_planes"])))
    return PROVENANCE_NS, pairs


def parse_receipt(pairs: list[tuple[str, str]]) -> tuple[str, int] | None:
    """(sha1, series) from a receipt annotation's pairs, or None when it is not one of ours."""
    d = dict(pairs)
    sha1 = d.get("source_sha1")
    if not sha1:
        return None
    try:
        series = int(d.get("series", "0"))
    except ValueError:
        return None
    return sha1, series


def _compact(value: Any) -> str:
    """One-line JSON (a MapAnnotation value is a plain string, editable in OMERO.web)."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
