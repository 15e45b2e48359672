"""The push's target on the server: the plan's :class:`~omero_push.plan.Target` as ids.

Meanings follow ``omero import -T`` (ome/omero-documentation ``omero/users/cli/import-target.rst``):
a name picks the newest of several containers (``+``, the default), the oldest (``-``), only a
unique one (``%``, else an error), or always makes a new one (``@``); none found means one is
created.  "Newest" is the highest id, which is creation order on an OMERO server.  A Dataset or
Project given by id may live in another of the user's groups: it is looked up across groups
(``omero.group=-1``, as BlitzGateway's ``SERVICE_OPTS`` do) and the session switches to that
group, so the images are created next to their dataset.

The ids are resolved once per push and kept on the plan: a retry after a reconnect must not make
a second ``@`` dataset.
"""

from __future__ import annotations

import logging
from typing import Any

from omero_push import annotate
from omero_push.errors import InputError, NoPermissionError
from omero_push.plan import ContainerRef, PushPlan, Target
from omero_push.session import Session, switch_group

log = logging.getLogger(__name__)

ALL_GROUPS = {"omero.group": "-1"}


def ensure_target(session: Session, plan: PushPlan) -> tuple[int | None, int]:
    """(project id or None, dataset id) for ``plan``; found, created, or remembered from before."""
    if plan.target is None:  # a plan built by hand: the name in ``plan.dataset``
        plan.target = Target(
            ContainerRef("Dataset", name=plan.dataset),
            None if plan.project is None else ContainerRef("Project", name=plan.project),
        )
    if plan.resolved is not None:
        # A retry after a reconnect: the group switch is per session, so make it again.
        project_id, dataset_id = plan.resolved
        if plan.resolved_group is not None and plan.resolved_group != session.group_id:
            switch_group(session, str(plan.resolved_group))
        return project_id, dataset_id
    project_id, dataset_id = resolve_target(session, plan.target)
    plan.resolved = (project_id, dataset_id)
    plan.resolved_group = session.group_id
    return project_id, dataset_id


def resolve_target(session: Session, target: Target) -> tuple[int | None, int]:
    """(project id or None, dataset id): by id (any of the user's groups) or found/created by name."""
    if target.dataset.id is not None:
        ds = _by_id(session, target.dataset)
        _check_can_link(session, ds, target.dataset)
        return None, target.dataset.id
    project_id: int | None = None
    if target.project is not None:
        if target.project.id is not None:
            _check_can_link(session, _by_id(session, target.project), target.project)
            project_id = target.project.id
        else:
            candidates = _own(session, _named(session, "Project", target.project.name or ""))
            project_id = _pick_or_create(session, target.project, candidates, None)
    if project_id is not None:
        candidates = [
            d
            for d in annotate.datasets_in_project(session, project_id)
            if annotate._val(d.getName()) == target.dataset.name
        ]
    else:
        candidates = _named(session, "Dataset", target.dataset.name or "")
    return project_id, _pick_or_create(session, target.dataset, _own(session, candidates), project_id)


def _named(session: Session, kind: str, name: str) -> list[Any]:
    """The user's containers named exactly ``name`` (a bound parameter: ``%`` and ``_`` are plain)."""
    return annotate.find_exact(session, kind, "name", name)


def _own(session: Session, objs: list[Any]) -> list[Any]:
    """The user's own containers (as ``omero import`` only ever picks the importer's)."""
    return [o for o in objs if annotate._owner_id(o) in (None, session.user_id)]


def _pick_or_create(
    session: Session, ref: ContainerRef, candidates: list[Any], project_id: int | None
) -> int:
    """Apply import's qualifier to the containers named ``ref.name``; create one when needed."""
    ids = sorted(annotate._val(o.getId()) for o in candidates)
    if ids and ref.pick != "@":
        if ref.pick == "%" and len(ids) > 1:
            raise InputError(
                f"{ref.describe()}: {len(ids)} {ref.kind}s have that name "
                f"(ids {', '.join(map(str, ids))}); give one by id"
            )
        return ids[0] if ref.pick == "-" else ids[-1]
    if ref.kind == "Project":
        new_id = annotate.create_project(session, ref.name or "")
    else:
        new_id = annotate.create_dataset(session, ref.name or "", project_id)
    log.info("created %s %r (id %d)", ref.kind.lower(), ref.name, new_id)
    return new_id


def _by_id(session: Session, ref: ContainerRef) -> Any:
    """Load a container across the user's groups and make its group the session's."""
    import omero

    try:
        obj = session.query().find(ref.kind, ref.id, ALL_GROUPS)
    except omero.SecurityViolation:
        obj = None
    if obj is None:
        raise InputError(
            f"{ref.kind}:{ref.id} does not exist or is not visible to {session.settings.user}"
        )
    gid = _group_id(obj)
    if gid is not None and gid != session.group_id:
        log.info("%s:%d is in group %d: switching to it", ref.kind, ref.id, gid)
        switch_group(session, str(gid))
    return obj


def _group_id(obj: Any) -> int | None:
    try:
        return annotate._val(obj.getDetails().getGroup().getId())
    except AttributeError:
        return None


def _check_can_link(session: Session, obj: Any, ref: ContainerRef) -> None:
    try:
        perms = obj.getDetails().getPermissions()
    except AttributeError:
        perms = None
    if perms is not None and not perms.canLink():
        raise NoPermissionError(
            f"{ref.kind}:{ref.id}: {session.settings.user} may not add to it"
        )
