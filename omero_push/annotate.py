"""One small function per OMERO verb: find/create containers, tags, key-value pairs, comments, links.

Every ``ensure_*`` function first looks for what exists and creates only what is missing, which is
what makes a re-run of the push create nothing new.  Names (datasets, projects, tags, the push's own
markers) are matched exactly with parameterised HQL (``where o.name = :value``), never with
``IQuery.findAllByString``: OMERO's matches ``LIKE '%value%'`` (ome/omero-server
``src/main/java/ome/logic/QueryImpl.java``, ``findAllByString``: ``Restrictions.like(fieldName,
value, MatchMode.ANYWHERE)``), so ``exp4`` would find ``exp42`` and a quote or ``%`` in a name
would change the match.  Containers come from ``IContainer.getImages`` /
``loadContainerHierarchy``, annotations from ``IMetadata.loadAnnotations``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from omero_push.session import Session

log = logging.getLogger(__name__)

KV_NS = "openmicroscopy.org/omero/client/mapAnnotation"
TAGSET_NS = "openmicroscopy.org/omero/insight/tagset"


def _o() -> Any:
    import omero
    import omero.model  # noqa: F401
    import omero.rtypes  # noqa: F401

    return omero


def _val(x: Any) -> Any:
    """Unwrap an RType (or None)."""
    return None if x is None else getattr(x, "val", x)


def _owner_id(obj: Any) -> int | None:
    try:
        return _val(obj.getDetails().getOwner().getId())
    except Exception:
        return None


def find_exact(
    session: Session, kind: str, field: str, value: str, *, own: bool = True
) -> list[Any]:
    """Objects of ``kind`` whose ``field`` equals ``value`` exactly (oldest first).

    ``own``: only the current user's.  ``value`` travels as a bound parameter, so quotes, ``%``,
    ``_`` and any unicode in it are plain characters.  ``kind`` and ``field`` are ours, never user
    input.
    """
    import omero.sys
    import omero_sys_ParametersI  # noqa: F401 - defines omero.sys.ParametersI

    params = omero.sys.ParametersI()
    params.addString("value", value)
    where = f"o.{field} = :value"
    if own:
        params.addLong("uid", session.user_id)
        where += " and o.details.owner.id = :uid"
    return list(
        session.query().findAllByQuery(
            f"select o from {kind} o where {where} order by o.id", params
        )
    )


def _prefer_own(session: Session, objs: Sequence[Any]) -> Any | None:
    """Of several candidates, the one the current user owns (else the first); None if empty."""
    if not objs:
        return None
    own = [o for o in objs if _owner_id(o) in (None, session.user_id)]
    pool = own or list(objs)
    return min(pool, key=lambda o: _val(o.getId()))


# --- containers ---------------------------------------------------------------------------------


def find_project(session: Session, name: str) -> int | None:
    """Id of the user's project called ``name`` (oldest if several), else None."""
    best = _prefer_own(session, find_exact(session, "Project", "name", name))
    return None if best is None else _val(best.getId())


def create_project(session: Session, name: str) -> int:
    o = _o()
    p = o.model.ProjectI()
    p.setName(o.rtypes.rstring(name))
    return _val(session.update().saveAndReturnObject(p).getId())


def get_or_create_project(session: Session, name: str) -> tuple[int, bool]:
    """(project id, created?)."""
    pid = find_project(session, name)
    if pid is not None:
        return pid, False
    return create_project(session, name), True


def datasets_in_project(session: Session, project_id: int) -> list[Any]:
    projects = session.container().loadContainerHierarchy("Project", [project_id], None)
    out: list[Any] = []
    for p in projects:
        out.extend(p.linkedDatasetList())
    return out


def find_dataset(session: Session, name: str, project_id: int | None) -> int | None:
    """Id of the user's dataset ``name`` (inside ``project_id`` when given), else None."""
    if project_id is not None:
        cands = [d for d in datasets_in_project(session, project_id) if _val(d.getName()) == name]
    else:
        cands = find_exact(session, "Dataset", "name", name)
    own = [d for d in cands if _owner_id(d) in (None, session.user_id)]
    best = _prefer_own(session, own)
    return None if best is None else _val(best.getId())


def create_dataset(session: Session, name: str, project_id: int | None) -> int:
    """Create a dataset (and its project link in the same save, so no unlinked dataset is left)."""
    o = _o()
    d = o.model.DatasetI()
    d.setName(o.rtypes.rstring(name))
    if project_id is None:
        return _val(session.update().saveAndReturnObject(d).getId())
    link = o.model.ProjectDatasetLinkI()
    link.setParent(o.model.ProjectI(project_id, False))
    link.setChild(d)
    saved = session.update().saveAndReturnObject(link)
    return _val(saved.getChild().getId())


def get_or_create_dataset(session: Session, name: str, project_id: int | None) -> tuple[int, bool]:
    did = find_dataset(session, name, project_id)
    if did is not None:
        return did, False
    return create_dataset(session, name, project_id), True


def load_object(session: Session, kind: str, obj_id: int) -> Any:
    return session.query().get(kind, obj_id)


def set_description(session: Session, kind: str, obj_id: int, text: str | None) -> bool:
    """Set ``description`` when it differs; returns whether anything was written."""
    o = _o()
    obj = load_object(session, kind, obj_id)
    if _val(obj.getDescription()) == (text or None):
        return False
    obj.setDescription(o.rtypes.rstring(text) if text else None)
    session.update().saveObject(obj)
    return True


def set_name_and_description(
    session: Session, kind: str, obj_id: int, name: str | None, description: str | None
) -> bool:
    """Set name (when given) and description where they differ, in one save."""
    o = _o()
    obj = load_object(session, kind, obj_id)
    changed = False
    if name and _val(obj.getName()) != name:
        obj.setName(o.rtypes.rstring(name))
        changed = True
    if _val(obj.getDescription()) != (description or None):
        obj.setDescription(o.rtypes.rstring(description) if description else None)
        changed = True
    if changed:
        session.update().saveObject(obj)
    return changed


# --- images -------------------------------------------------------------------------------------


def images_in_dataset(session: Session, dataset_id: int) -> list[Any]:
    return list(session.container().getImages("Dataset", [dataset_id], None))


def find_images_by_description(session: Session, text: str) -> list[Any]:
    """The user's images whose description is exactly ``text`` (the push's "incomplete" marker).

    Exact: the marker of "series 1" must not find the image of "series 10".
    """
    return find_exact(session, "Image", "description", text)


def linked_image_ids(session: Session, dataset_id: int, image_ids: Sequence[int]) -> set[int]:
    """Which of ``image_ids`` are already linked to the dataset (one query, whatever its size)."""
    import omero.sys

    if not image_ids:
        return set()
    params = omero.sys.ParametersI()
    params.addLong("did", dataset_id)
    params.addIds(list(image_ids))
    links = session.query().findAllByQuery(
        "select l from DatasetImageLink l where l.parent.id = :did and l.child.id in (:ids)",
        params,
    )
    return {_val(link.getChild().getId()) for link in links}


def datasets_of_images(session: Session, image_ids: Sequence[int]) -> dict[int, set[int]]:
    """Image id → ids of the datasets it is linked to (no entry: in no dataset). One query."""
    import omero.sys

    if not image_ids:
        return {}
    params = omero.sys.ParametersI()
    params.addIds(list(image_ids))
    links = session.query().findAllByQuery(
        "select l from DatasetImageLink l where l.child.id in (:ids)", params
    )
    out: dict[int, set[int]] = {}
    for link in links:
        out.setdefault(_val(link.getChild().getId()), set()).add(_val(link.getParent().getId()))
    return out


def leftovers_of(
    session: Session, image_ids: Sequence[int], dataset_id: int
) -> tuple[list[int], list[int], dict[int, set[int]]]:
    """Split half-made images an interrupted push left into (in this dataset, in no dataset,
    elsewhere: image → its datasets).

    A half-made image belongs to the dataset its push was aimed at: a later push into another
    dataset must neither complete it there (it would link it into the wrong dataset) nor delete
    it (its own push may still be running or be re-run). Images in no dataset say nothing about
    their target; callers remove them rather than adopt them.
    """
    where = datasets_of_images(session, image_ids)
    here = sorted(i for i in image_ids if dataset_id in where.get(i, ()))
    nowhere = sorted(i for i in image_ids if not where.get(i))
    elsewhere = {i: where[i] for i in image_ids if where.get(i) and dataset_id not in where[i]}
    return here, nowhere, elsewhere


def link_images_to_dataset(
    session: Session, dataset_id: int, image_ids: Sequence[int], *, check: bool = True
) -> int:
    """Link images not yet in the dataset; returns how many links were made.

    ``check=False`` skips the lookup for images just created by this push (they cannot be linked).
    """
    if not image_ids:
        return 0
    o = _o()
    present = linked_image_ids(session, dataset_id, image_ids) if check else set()
    links = []
    for iid in image_ids:
        if iid in present:
            continue
        link = o.model.DatasetImageLinkI()
        link.setParent(o.model.DatasetI(dataset_id, False))
        link.setChild(o.model.ImageI(iid, False))
        links.append(link)
    if links:
        session.update().saveArray(links)
    return len(links)


# --- annotations --------------------------------------------------------------------------------


def linked_annotations(session: Session, kind: str, obj_id: int) -> list[Any]:
    """All annotations linked to one object (any type)."""
    res = session.metadata().loadAnnotations(kind, [obj_id], [], [], None)
    return list(res.get(obj_id, []))


def linked_annotations_many(
    session: Session, kind: str, obj_ids: Sequence[int]
) -> dict[int, list[Any]]:
    if not obj_ids:
        return {}
    res = session.metadata().loadAnnotations(kind, list(obj_ids), [], [], None)
    return {int(k): list(v) for k, v in res.items()}


def map_pairs(ann: Any) -> list[tuple[str, str]]:
    return [(nv.name, nv.value) for nv in (ann.getMapValue() or [])]


def is_kind(ann: Any, kind: str) -> bool:
    """Annotation type check by class name (works for loaded and unloaded objects)."""
    return type(ann).__name__ in (kind, kind + "I")


def link_annotation(
    session: Session, kind: str, obj_id: int, ann_id: int, ann_kind: str = "TagAnnotation"
) -> None:
    """Link an existing annotation (of class ``ann_kind``) to the object ``kind``:``obj_id``."""
    o = _o()
    link = getattr(o.model, f"{kind}AnnotationLinkI")()
    link.setParent(getattr(o.model, f"{kind}I")(obj_id, False))
    link.setChild(getattr(o.model, f"{ann_kind}I")(ann_id, False))
    session.update().saveObject(link)


def create_and_link(session: Session, kind: str, obj_id: int, ann: Any) -> int:
    """Save a new annotation together with its link in one call: no unlinked annotation is left."""
    o = _o()
    link = getattr(o.model, f"{kind}AnnotationLinkI")()
    link.setParent(getattr(o.model, f"{kind}I")(obj_id, False))
    link.setChild(ann)
    saved = session.update().saveAndReturnObject(link)
    return _val(saved.getChild().getId())


def may_link(session: Session, obj: Any) -> bool:
    """Whether the user may link ``obj`` (a tag) to their data: their own, or ``canAnnotate``.

    OMERO sends each object's permissions with the restrictions that apply to the caller
    (ome/omero-py ``omero_model_PermissionsI.py``: ``canAnnotate`` is false where the server set
    ANNOTATERESTRICTION), so a private or read-only group's tags of other users are refused here
    instead of by a SecurityViolation at link time.
    """
    if _owner_id(obj) in (None, session.user_id):
        return True
    try:
        perms = obj.getDetails().getPermissions()
    except Exception:
        perms = None
    return perms is not None and bool(perms.canAnnotate())


def find_tags(session: Session, text: str) -> list[Any]:
    """Tags (not tag sets) with exactly this text that the user may link, oldest first."""
    found = find_exact(session, "TagAnnotation", "textValue", text, own=False)
    return [t for t in found if _val(t.getNs()) != TAGSET_NS and may_link(session, t)]


def find_tag(session: Session, text: str) -> int | None:
    """Id of the tag with this exact text the push reuses, None if there is none.

    The oldest of the tags the user may link, whoever owns it: one rule that every run (and
    every import's copies, see :func:`adopt_imported_tags`) agrees on, so a text keeps one tag.
    """
    found = find_tags(session, text)
    return None if not found else min(_val(t.getId()) for t in found)


def get_or_create_tag(session: Session, text: str) -> tuple[int, bool]:
    """Reuse the tag called ``text`` or create it: one tag per name, however often we push.

    Ids are remembered for the session, so tagging the 500th image costs no lookup.
    """
    with session.lock:  # two images tagged at once must not both create the tag
        known: dict[str, int] = session.cache.setdefault("tags", {})
        if text in known:
            return known[text], False
        tid = find_tag(session, text)
        if tid is not None:
            known[text] = tid
            return tid, False
        o = _o()
        tag = o.model.TagAnnotationI()
        tag.setTextValue(o.rtypes.rstring(text))
        tid = _val(session.update().saveAndReturnObject(tag).getId())
        known[text] = tid
        return tid, True


def ensure_tags(
    session: Session,
    kind: str,
    obj_id: int,
    texts: Sequence[str],
    existing: list[Any] | None = None,
) -> tuple[list[int], list[str], int]:
    """Link tags ``texts`` to the object, reusing tags by name.

    Returns (tag ids, texts of the tags that had to be created, links created).
    """
    if not texts:
        return [], [], 0
    anns = linked_annotations(session, kind, obj_id) if existing is None else existing
    linked_text = {
        _val(a.getTextValue()): _val(a.getId()) for a in anns if is_kind(a, "TagAnnotation")
    }
    ids: list[int] = []
    created: list[str] = []
    links = 0
    for text in dict.fromkeys(texts):
        if text in linked_text:
            ids.append(linked_text[text])
            continue
        tid, new = get_or_create_tag(session, text)
        if new:
            created.append(text)
        link_annotation(session, kind, obj_id, tid)
        links += 1
        ids.append(tid)
    return ids, created, links


def adopt_imported_tags(session: Session, kind: str, obj_ids: Sequence[int]) -> int:
    """Make the objects link the push's one tag per text instead of the copies an import made.

    OMERO's import turns every TagAnnotation of the OME-XML into a new tag object
    (ome/omero-blitz ``src/main/java/ome/formats/OMEROMetadataStoreClient.java``,
    ``setTagAnnotationValue`` makes a ``TagAnnotationI`` per OME-XML annotation), so each import
    would add one more "glucose" tag.  Here each tag linked to ``obj_ids`` whose text already has
    an older tag the user may link (:func:`find_tag`) is replaced: the objects are linked to that
    one and the copy (the user's own, made by this import) is deleted with its links.  Returns how
    many copies were removed.
    """
    anns = linked_annotations_many(session, kind, list(obj_ids))
    holders: dict[int, list[int]] = {}  # tag id -> objects linking it
    tags: dict[int, Any] = {}
    for oid, lst in anns.items():
        for a in lst:
            if is_kind(a, "TagAnnotation") and _val(a.getNs()) != TAGSET_NS:
                tid = _val(a.getId())
                tags[tid] = a
                holders.setdefault(tid, []).append(oid)
    doomed: list[int] = []
    for tid, tag in sorted(tags.items()):
        text = _val(tag.getTextValue())
        if text is None or _owner_id(tag) not in (None, session.user_id):
            continue
        keep, _new = get_or_create_tag(session, text)
        if keep == tid:
            continue
        for oid in holders[tid]:
            linked = {_val(a.getId()) for a in anns.get(oid, [])}
            if keep not in linked:
                link_annotation(session, kind, oid, keep)
                anns.setdefault(oid, []).append(_o().model.TagAnnotationI(keep, False))
        doomed.append(tid)
    if doomed:
        log.debug("replacing %d tag(s) the import made by the existing ones", len(doomed))
        delete_objects(session, "TagAnnotation", doomed)
    return len(doomed)


def new_map_annotation(pairs: Sequence[tuple[str, str]], ns: str) -> Any:
    o = _o()
    ann = o.model.MapAnnotationI()
    ann.setNs(o.rtypes.rstring(ns))
    ann.setMapValue([o.model.NamedValue(str(k), str(v)) for k, v in pairs])
    return ann


def find_map_annotation(
    anns: Sequence[Any], ns: str, pairs: Sequence[tuple[str, str]] | None = None
) -> Any | None:
    """A linked MapAnnotation in ``ns`` (with exactly ``pairs`` when given)."""
    for a in anns:
        if not is_kind(a, "MapAnnotation") or _val(a.getNs()) != ns:
            continue
        if pairs is None or map_pairs(a) == [(str(k), str(v)) for k, v in pairs]:
            return a
    return None


def ensure_map_annotation(
    session: Session,
    kind: str,
    obj_id: int,
    pairs: Sequence[tuple[str, str]],
    ns: str = KV_NS,
    existing: list[Any] | None = None,
) -> tuple[int | None, bool]:
    """Attach key-value ``pairs`` unless an identical MapAnnotation in ``ns`` is already linked.

    Identical means same namespace and same ordered pairs: OMERO's import already turns the
    OME-XML's MapAnnotations into such annotations, so in import mode this finds them and adds none.
    """
    if not pairs:
        return None, False
    anns = linked_annotations(session, kind, obj_id) if existing is None else existing
    found = find_map_annotation(anns, ns, pairs)
    if found is not None:
        return _val(found.getId()), False
    return create_and_link(session, kind, obj_id, new_map_annotation(pairs, ns)), True


def ensure_comments(
    session: Session,
    kind: str,
    obj_id: int,
    texts: Sequence[str],
    existing: list[Any] | None = None,
    ns: str | None = None,
) -> int:
    """Attach comments not yet present (by exact text, in namespace ``ns`` when given, as
    ``omero import --annotation-ns``); returns how many were created."""
    if not texts:
        return 0
    o = _o()
    anns = linked_annotations(session, kind, obj_id) if existing is None else existing
    have = {
        _val(a.getTextValue())
        for a in anns
        if is_kind(a, "CommentAnnotation") and (ns is None or _val(a.getNs()) == ns)
    }
    n = 0
    for text in texts:
        if text in have:
            continue
        c = o.model.CommentAnnotationI()
        c.setTextValue(o.rtypes.rstring(text))
        if ns is not None:
            c.setNs(o.rtypes.rstring(ns))
        create_and_link(session, kind, obj_id, c)
        have.add(text)
        n += 1
    return n


def delete_objects(session: Session, kind: str, ids: Sequence[int]) -> None:
    """Delete objects with OMERO's Delete2 (the graph: pixels, links, own annotations, fileset).

    Used only for our own leftovers (an image made twice by two pushes running at once, an
    upload a crash cut short).  IUpdate.deleteObject would refuse an Image on a real OMERO.
    """
    import omero.cmd

    from omero_push.session import wait_for_command

    if not ids:
        return
    req = omero.cmd.Delete2(targetObjects={kind: list(ids)})
    wait_for_command(session, session.sf.submit(req), f"deleting {kind} {list(ids)}")
