"""Where the images go: ``Dataset:ID`` as given, or a dataset (inside a project) found or created."""

from __future__ import annotations

import logging
from typing import Any

from omero_push import annotate
from omero_push.errors import InputError, NoPermissionError
from omero_push.plan import PushPlan
from omero_push.session import Session

log = logging.getLogger(__name__)


def ensure_target(session: Session, plan: PushPlan) -> tuple[int | None, int]:
    """(project id, dataset id): ``Dataset:ID`` is used as is; a name is found or created."""
    spec = plan.dataset
    if spec.lower().startswith("dataset:") and spec.split(":", 1)[1].strip().isdigit():
        did = int(spec.split(":", 1)[1])
        ds = _get_or_none(session, "Dataset", did)
        if ds is None:
            raise InputError(
                f"Dataset:{did} does not exist or is not visible to {session.settings.user}"
            )
        perms = _permissions(ds)
        if perms is not None and not perms.canLink():
            raise NoPermissionError(
                f"Dataset:{did}: {session.settings.user} may not add images to it"
            )
        return None, did
    project_id = None
    if plan.project:
        project_id, created = annotate.get_or_create_project(session, plan.project)
        if created:
            log.info("created project %r (id %d)", plan.project, project_id)
    did, created = annotate.get_or_create_dataset(session, spec, project_id)
    if created:
        log.info("created dataset %r (id %d)", spec, did)
    return project_id, did


def _get_or_none(session: Session, kind: str, obj_id: int) -> Any | None:
    import omero

    try:
        return session.query().find(kind, obj_id)
    except omero.SecurityViolation:
        raise NoPermissionError(
            f"{kind}:{obj_id}: not visible to {session.settings.user}"
        ) from None


def _permissions(obj: Any) -> Any | None:
    try:
        return obj.getDetails().getPermissions()
    except Exception:
        return None
