"""What a push will do, worked out from the files alone (no server): the plan.

A plan lists every OME-TIFF with its SHA-1 (the key by which a re-run recognises what is already in
OMERO), the OME Images inside it and the annotations each will get, plus the dataset-level
description, tags and HDF5 tables.  ``--dry-run`` prints exactly this and stops, so building it must
never touch the network.

Sources: a converter output folder (its ``manifest.json`` gives checksums, options, description,
tags and the tables file: nothing has to be re-hashed; :mod:`omero_push.manifest`), or OME-TIFF
files from anywhere (hashed; :mod:`omero_push.ometiff`). Here: the target as ``omero import -T``
names it, what the options add to every image, and the plan built from both.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from omero_push.errors import InputError
from omero_push.manifest import (
    TablesSource,
    items_from_manifest,
    read_manifest,
    tables_from_manifest,
)
from omero_push.ometiff import ImageMeta, PushItem, is_ome_tiff, item_from_file
from omero_push.progress import format_bytes

log = logging.getLogger(__name__)


#: ``omero import -T`` qualifiers of the ``name`` discriminator (docs: omero/users/cli/import-target.rst
#: in ome/omero-documentation): newest of several, oldest, only if unique, always a new container.
NAME_PICKS = {"+": "newest", "-": "oldest", "%": "unique", "@": "new"}


@dataclass(frozen=True)
class ContainerRef:
    """A Project or Dataset as the user named it: by id, or by name with import's qualifier."""

    kind: str  # "Project" | "Dataset"
    id: int | None = None
    name: str | None = None
    pick: str = "+"  # for names: a key of NAME_PICKS

    def describe(self) -> str:
        if self.id is not None:
            return f"{self.kind}:id:{self.id}"
        qual = "" if self.pick == "+" else self.pick
        return f"{self.kind}:{qual}name:{self.name}"


@dataclass(frozen=True)
class Target:
    """Where the images go: a dataset, optionally inside a project (``Project:…/Dataset:…``)."""

    dataset: ContainerRef
    project: ContainerRef | None = None

    def describe(self) -> str:
        """The target in ``omero import -T`` syntax (what ``--dry-run`` and the summary show)."""
        if self.project is None:
            return self.dataset.describe()
        return f"{self.project.describe()}/{self.dataset.describe()}"


def _container(kind: str, rest: str, spec: str) -> ContainerRef:
    """``[disc:]pattern`` of one ``-T`` part; the discriminator defaults to ``id`` as in import."""
    disc, sep, pattern = rest.partition(":")
    if not sep:  # "Dataset:1234": import's default discriminator is id
        disc, pattern = "id", rest
    pick = "+"
    if disc[:1] in NAME_PICKS:
        pick, disc = disc[0], disc[1:]
    if disc == "id":
        if pick != "+" or not pattern.strip().isdigit():
            raise InputError(f"target {spec!r}: {kind}:id: needs a number, e.g. {kind}:id:1234")
        return ContainerRef(kind, id=int(pattern))
    if disc == "name":
        if not pattern:
            raise InputError(f"target {spec!r}: {kind}:name: needs a name")
        return ContainerRef(kind, name=pattern, pick=pick)
    raise InputError(f"target {spec!r}: unknown discriminator {disc!r} (use id or name)")


def parse_target(spec: str) -> Target:
    """An ``omero import -T`` template: ``Dataset:[+-%@]name:NAME``, ``Dataset:[id:]ID``,
    ``Project:name:P/Dataset:name:D`` (any further colons belong to the name).

    Screens and ``regex:`` targets are import's for plates and path patterns; omero-push puts
    images into datasets, so those are refused with a one-line error rather than half-supported.
    """
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise InputError(f"target {spec!r}: expected Dataset:name:NAME or Dataset:id:ID")
    if kind == "Project":
        proj, sep, ds = rest.partition("/Dataset:")
        if not sep:
            raise InputError(f"target {spec!r}: a Project target needs /Dataset:…, e.g. "
                             "Project:name:P/Dataset:name:D")
        return Target(_container("Dataset", ds, spec), _container("Project", proj, spec))
    if kind == "Dataset":
        return Target(_container("Dataset", rest, spec))
    raise InputError(
        f"target {spec!r}: omero-push puts images into datasets; use Dataset:… or "
        "Project:…/Dataset:…"
    )


def target_from_options(
    dataset: str | int | None, project: str | None = None, target: str | None = None
) -> Target | None:
    """``-d``/``-P``/``-T`` with ``omero import``'s meanings, or None to use the manifest's hint.

    ``-d 1234`` (a number) is Dataset **ID** 1234 as in ``omero import -d``; ``-d Dataset:…`` is a
    ``-T`` template (``Dataset:ID`` keeps working); any other value is a dataset name, found or
    created (a numeric *name* is ``-T Dataset:name:2024``).
    """
    if target and dataset is not None:
        raise InputError("give the dataset with --dataset or --target, not both")
    if target:
        t = parse_target(target)
    elif dataset is None or str(dataset) == "":
        return None
    elif isinstance(dataset, int) or str(dataset).strip().isdigit():
        t = Target(ContainerRef("Dataset", id=int(dataset)))
    elif str(dataset).startswith("Dataset:"):
        t = parse_target(str(dataset))
    else:
        t = Target(ContainerRef("Dataset", name=str(dataset)))
    if project:
        if t.project is not None:
            raise InputError("the --target names a Project already; drop --project")
        if t.dataset.id is not None:
            raise InputError("--project goes with a dataset name, not a Dataset ID")
        ref = ContainerRef("Project", id=int(project)) if project.isdigit() else None
        t = Target(t.dataset, ref or ContainerRef("Project", name=project))
    return t


@dataclass(frozen=True)
class ImageOverrides:
    """What ``omero import``'s ``-n``/``-x``/``--annotation-*`` and our ``--tag``/``--kv`` add to
    every image of the push (as import applies them to every image it makes)."""

    name: str | None = None
    description: str | None = None
    tags: tuple[str, ...] = ()
    kv_pairs: tuple[tuple[str, str], ...] = ()
    comments: tuple[str, ...] = ()
    ns_comments: tuple[tuple[str, str], ...] = ()

    def apply(self, im: ImageMeta) -> ImageMeta:
        from dataclasses import replace

        return replace(
            im,
            name=self.name or im.name,
            description=self.description if self.description is not None else im.description,
            tags=tuple(dict.fromkeys((*im.tags, *self.tags))),
            extra_kv_pairs=tuple(dict.fromkeys((*im.extra_kv_pairs, *self.kv_pairs))),
            comments=tuple(dict.fromkeys((*im.comments, *self.comments))),
            ns_comments=tuple(dict.fromkeys((*im.ns_comments, *self.ns_comments))),
        )


def parse_kv(text: str) -> tuple[str, str]:
    """``KEY=VALUE`` of ``--kv`` (the value may hold further ``=``)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise InputError(f"--kv {text!r}: expected KEY=VALUE")
    return key.strip(), value


@dataclass
class PushPlan:
    """Everything the push will create or reuse, before any connection is made."""

    items: list[PushItem]
    dataset: str
    project: str | None = None
    #: The parsed target; ``dataset``/``project`` above are its text for messages.
    target: Target | None = None
    description: str | None = None
    tags: list[str] = field(default_factory=list)
    kv_pairs: list[tuple[str, str]] = field(default_factory=list)
    tables: list[TablesSource] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    #: (project id, dataset id) once resolved on the server, and the group they are in: a retry
    #: after a reconnect reuses them (an ``@`` target must not make a second dataset).
    resolved: tuple[int | None, int] | None = None
    resolved_group: int | None = None

    @property
    def total_bytes(self) -> int:
        return sum(i.size for i in self.items)

    @property
    def n_images(self) -> int:
        return sum(len(i.images) for i in self.items)


def build_plan(
    paths: Sequence[str | os.PathLike[str]],
    *,
    dataset: str | int | None,
    project: str | None = None,
    target: str | Target | None = None,
    overrides: ImageOverrides | None = None,
) -> PushPlan:
    """Plan the push of ``paths`` (converter output folders and/or OME-TIFF files).

    The dataset and project fall back to the manifest's ``omero_dataset``/``omero_project`` hints
    (the lab writes the OMERO project into its log file), so ``--dataset`` can be left out when the
    experiment says where it belongs.  ``dataset``/``project``/``target`` have ``omero import``'s
    meanings (:func:`target_from_options`); ``overrides`` apply to every image.
    """
    tgt = target if isinstance(target, Target) else target_from_options(dataset, project, target)
    if not paths:
        raise InputError("nothing to push: give a converter output folder or OME-TIFF files")
    items: list[PushItem] = []
    skipped: list[tuple[Path, str]] = []
    tables: list[TablesSource] = []
    descriptions: list[str] = []
    tags: list[str] = []
    kv: list[tuple[str, str]] = []
    hint_project: str | None = None
    hint_dataset: str | None = None
    loose = [Path(raw) for raw in paths if Path(raw).is_file()]
    for p in loose:
        if not (is_ome_tiff(p) or p.suffix.lower() in (".tif", ".tiff")):
            raise InputError(f"{p}: not an OME-TIFF (expected .ome.tif/.ome.tiff)")
    # Hash loose files two at a time: hashlib releases the GIL, so this uses both cores.
    with ThreadPoolExecutor(max_workers=2) as ex:
        from_files = dict(zip(loose, ex.map(item_from_file, loose), strict=True))
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            manifest = read_manifest(p)
            got, skip = items_from_manifest(p, manifest)
            items.extend(got)
            skipped.extend(skip)
            meta = manifest.get("metadata") or {}
            if meta.get("description"):
                descriptions.append(str(meta["description"]))
            tags.extend(str(t) for t in meta.get("tags") or [])
            for pair in meta.get("key_values") or []:
                if isinstance(pair, (list, tuple)) and len(pair) == 2:
                    kv.append((str(pair[0]), str(pair[1])))
            hint_project = hint_project or meta.get("omero_project")
            hint_dataset = hint_dataset or meta.get("omero_dataset")
            tables.extend(tables_from_manifest(p, manifest))
        elif p in from_files:
            items.append(from_files[p])
        else:
            raise InputError(f"{p}: no such file or folder")
    items = _dedupe(items)
    if overrides is not None:
        for item in items:
            item.images = [overrides.apply(im) for im in item.images]
    if tgt is None:
        if not hint_dataset:
            raise InputError(
                "no dataset given: use --dataset NAME|ID or --target Dataset:name:NAME"
            )
        # The manifest's hint is a name even when it looks like a number.
        tgt = Target(ContainerRef("Dataset", name=str(hint_dataset)))
    if tgt.project is None and tgt.dataset.id is None and hint_project:
        tgt = Target(tgt.dataset, ContainerRef("Project", name=str(hint_project)))
    unique_desc = list(dict.fromkeys(descriptions))
    if len(unique_desc) > 1:
        log.warning("the manifests give %d different descriptions; joining them", len(unique_desc))
    return PushPlan(
        items=items,
        dataset=_label(tgt.dataset),
        project=None if tgt.project is None else _label(tgt.project),
        target=tgt,
        description="\n\n".join(unique_desc) or None,
        tags=list(dict.fromkeys(tags)),
        kv_pairs=list(dict.fromkeys(kv)),
        tables=tables,
        skipped=skipped,
    )


def _label(ref: ContainerRef) -> str:
    """A container for messages: its name, or ``Dataset:ID``."""
    return ref.name if ref.name is not None else f"{ref.kind}:{ref.id}"


def _dedupe(items: Iterable[PushItem]) -> list[PushItem]:
    """The same bytes given twice (two paths, or a folder and one of its files) are pushed once."""
    seen: dict[str, PushItem] = {}
    for item in items:
        if item.sha1 in seen:
            log.info("%s: same content as %s; pushing once", item.path, seen[item.sha1].path)
            continue
        seen[item.sha1] = item
    return list(seen.values())


def format_plan(plan: PushPlan, mode: str, provenance: bool) -> str:
    """Human-readable plan (what ``--dry-run`` prints)."""
    target = f"{plan.project} / {plan.dataset}" if plan.project else plan.dataset
    if plan.target is not None:  # as resolved, in omero import -T syntax
        target += f" [{plan.target.describe()}]"
    lines = [
        f"push plan: {len(plan.items)} file(s), {plan.n_images} image(s), "
        f"{_human(plan.total_bytes)} -> {target} (mode {mode})"
    ]
    if plan.description:
        first = plan.description.strip().splitlines()[0]
        lines.append(f"  dataset description: {first[:70]}{'…' if len(first) > 70 else ''}")
    if plan.tags:
        lines.append(f"  dataset tags: {', '.join(plan.tags)}")
    if plan.kv_pairs:
        lines.append(f"  dataset key-value pairs: {len(plan.kv_pairs)}")
    for item in plan.items:
        lines.append(f"  {item.path}  {_human(item.size)}  sha1 {item.sha1}")
        for im in item.images:
            dims = " ".join(f"{a}={im.sizes[a]}" for a in "XYZCT")
            chans = ", ".join(c.name or "?" for c in im.channels)
            lines.append(f"    image {im.name!r}: {dims} {im.pixel_type} [{chans}]")
            extra = [f"{len(im.kv_pairs) + len(im.extra_kv_pairs)} key-value pairs"]
            if im.tags:
                extra.append(f"tags {', '.join(im.tags)}")
            if im.comments or im.ns_comments:
                extra.append(f"{len(im.comments) + len(im.ns_comments)} comment(s)")
            extra.append("provenance" if provenance else "checksum marker only")
            lines.append(f"      annotations: {'; '.join(extra)}")
    for t in plan.tables:
        names = ", ".join(t.names) if t.names else "(all tables in the file)"
        lines.append(f"  tables from {t.path}: {names}")
    for path, why in plan.skipped:
        lines.append(f"  skipped {path}: {why}")
    return "\n".join(lines)


def _human(n: int) -> str:
    return format_bytes(n)


