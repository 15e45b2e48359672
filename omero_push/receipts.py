"""Receipts: which images are done, and completing an image so that it counts as done.

An image counts as done only once its receipt (the provenance MapAnnotation, written after its other
annotations) is present; the real name and description, replacing the "incomplete" marker, come last.
"""

from __future__ import annotations

import logging

from omero_push import annotate, provenance
from omero_push.ometiff import ImageMeta, PushItem
from omero_push.runstate import PushResult, note_tags
from omero_push.session import Session
from posdir2ometiff import __version__

log = logging.getLogger(__name__)


def find_receipts(
    session: Session, dataset_id: int
) -> dict[tuple[str, int], tuple[int, str | None]]:
    """(sha1, series) → (image id, description) for the complete images already in the dataset."""
    images = annotate.images_in_dataset(session, dataset_id)
    if not images:
        return {}
    desc = {annotate._val(i.getId()): annotate._val(i.getDescription()) for i in images}
    anns = annotate.linked_annotations_many(session, "Image", list(desc))
    found: dict[tuple[str, int], tuple[int, str | None]] = {}
    for iid, lst in anns.items():
        for a in lst:
            if not annotate.is_kind(a, "MapAnnotation"):
                continue
            if annotate._val(a.getNs()) not in provenance.RECEIPT_NAMESPACES:
                continue
            key = provenance.parse_receipt(annotate.map_pairs(a))
            if key is not None and key not in found:
                found[key] = (iid, desc.get(iid))
    return found


def earlier_pushes(
    session: Session, dataset_id: int
) -> dict[tuple[str, int], list[tuple[int, str]]]:
    """(source file name, series) → [(image id, SHA-1)] of the images pushed into the dataset
    with full provenance: what a changed file with the same name was pushed as before."""
    images = annotate.images_in_dataset(session, dataset_id)
    if not images:
        return {}
    ids = [annotate._val(i.getId()) for i in images]
    anns = annotate.linked_annotations_many(session, "Image", ids)
    out: dict[tuple[str, int], list[tuple[int, str]]] = {}
    for iid, lst in anns.items():
        for a in lst:
            if not annotate.is_kind(a, "MapAnnotation"):
                continue
            if annotate._val(a.getNs()) != provenance.PROVENANCE_NS:
                continue
            pairs = dict(annotate.map_pairs(a))
            try:
                key = (pairs["source_file"], int(pairs["series"]))
            except (KeyError, ValueError):
                continue
            out.setdefault(key, []).append((iid, pairs.get("source_sha1", "?")))
    return out


def complete_image(
    session: Session,
    item: PushItem,
    im: ImageMeta,
    iid: int,
    mode: str,
    provenance_on: bool,
    res: PushResult,
) -> int:
    """Tags, key-value pairs, comments; then the receipt; then the real name and description."""
    existing = annotate.linked_annotations(session, "Image", iid)
    n = 0
    _ids, created, links = annotate.ensure_tags(session, "Image", iid, list(im.tags), existing)
    note_tags(res, im.tags, created)
    n += links
    if im.kv_pairs:
        _aid, made = annotate.ensure_map_annotation(
            session, "Image", iid, list(im.kv_pairs), annotate.KV_NS, existing
        )
        n += int(made)
    if im.extra_kv_pairs:  # --kv: a MapAnnotation of its own beside the file's
        _aid, made = annotate.ensure_map_annotation(
            session, "Image", iid, list(im.extra_kv_pairs), annotate.KV_NS, existing
        )
        n += int(made)
    n += annotate.ensure_comments(session, "Image", iid, list(im.comments), existing)
    for ns, text in im.ns_comments:  # --annotation-ns/--annotation-text, as omero import
        n += annotate.ensure_comments(session, "Image", iid, [text], existing, ns=ns)
    ns, pairs = provenance.receipt_pairs(
        item, im, mode=mode, provenance=provenance_on, tool_version=__version__
    )
    if annotate.find_map_annotation(existing, ns) is None:
        annotate.create_and_link(session, "Image", iid, annotate.new_map_annotation(pairs, ns))
        n += 1
    # Last: the real description replaces the "incomplete" marker; the name is the OME Image's
    # (OMERO's import names images of multi-image files "file [series]").
    annotate.set_name_and_description(session, "Image", iid, im.name, im.description)
    return n
