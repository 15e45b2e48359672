"""What a push tells people and scripts: OMERO.web links and the ``--output json`` document.

The JSON document is the CLI's contract with scripts (``omero-push … --output json | jq``):
``status`` ("ok", "partial", "dry-run" or "error"), the target (``project_id``, ``dataset_id``,
the target as ``omero import -T`` text), one entry per image (``id``, ``name``, ``source``,
``series``, ``status``: created / resumed / present, ``url`` when OMERO.web is known), counts,
and the files not pushed.  Sizes are bytes (integers), never formatted.
"""

from __future__ import annotations

from typing import Any

from omero_push.errors import PushError
from omero_push.plan import PushPlan


def web_link(web_url: str, kind: str, obj_id: int) -> str:
    """OMERO.web's link to an object: ``<web>/webclient/?show=image-123`` (as its "Link" button)."""
    return f"{web_url.rstrip('/')}/webclient/?show={kind.lower()}-{obj_id}"


def web_links(result: Any, web_url: str | None) -> list[str]:
    """Summary lines with OMERO.web links to the dataset and each image (none without a URL)."""
    if not web_url or result.dry_run or result.dataset_id is None:
        return []
    lines = [f"OMERO.web: {web_link(web_url, 'Dataset', result.dataset_id)}"]
    lines += [
        f"  Image:{r.image_id}  {web_link(web_url, 'Image', r.image_id)}" for r in result.images
    ]
    return lines


def _target_text(plan: PushPlan) -> str:
    return plan.target.describe() if plan.target is not None else plan.dataset


def result_json(result: Any, web_url: str | None = None) -> dict[str, Any]:
    """The push's result as plain JSON types (see the module docstring for the keys)."""
    plan: PushPlan = result.plan
    statuses = [r.status for r in result.images]
    status = "dry-run" if result.dry_run else "partial" if plan.skipped else "ok"
    images = []
    for r in result.images:
        entry: dict[str, Any] = {
            "id": r.image_id,
            "name": r.name,
            "source": str(r.source),
            "series": r.series,
            "status": r.status,
            "annotations_created": r.annotations_created,
        }
        if web_url:
            entry["url"] = web_link(web_url, "Image", r.image_id)
        images.append(entry)
    doc: dict[str, Any] = {
        "status": status,
        "mode": result.mode,
        "target": _target_text(plan),
        "project_id": result.project_id,
        "dataset_id": result.dataset_id,
        "images": images,
        "counts": {
            "files": len(plan.items),
            "images": len(result.images) if not result.dry_run else plan.n_images,
            "created": statuses.count("created"),
            "resumed": statuses.count("resumed"),
            "present": statuses.count("present"),
            "skipped_files": len(plan.skipped),
            "bytes": plan.total_bytes,
            "tags_created": len(result.tags_created),
            "tags_reused": len(result.tags_reused),
            "tables_created": len(result.tables_created),
            "tables_present": len(result.tables_present),
            "reconnects": result.reconnects,
        },
        "skipped": [{"path": str(p), "reason": why} for p, why in plan.skipped],
    }
    if web_url and result.dataset_id is not None:
        doc["dataset_url"] = web_link(web_url, "Dataset", result.dataset_id)
    return doc


def error_json(exc: PushError) -> dict[str, Any]:
    """A failed push for scripts: the one-line message and the exit status."""
    return {"status": "error", "error": str(exc), "exit_code": exc.exit_code}
