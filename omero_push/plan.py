"""What a push will do, worked out from the files alone (no server): the plan.

A plan lists every OME-TIFF with its SHA-1 (the key by which a re-run recognises what is already in
OMERO), the OME Images inside it and the annotations each will get, plus the dataset-level
description, tags and HDF5 tables.  ``--dry-run`` prints exactly this and stops, so building it must
never touch the network.

Sources: a converter output folder (its ``manifest.json`` gives checksums, options, description,
tags and the tables file: nothing has to be re-hashed), or OME-TIFF files from anywhere (hashed here).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tifffile

from omero_push.errors import InputError
from omero_push.progress import format_bytes

log = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
KV_NAMESPACE = "openmicroscopy.org/omero/client/mapAnnotation"
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf")
_HASH_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class ChannelMeta:
    """A channel as OMERO should show it: name and (R, G, B, A) colour when the file has one."""

    name: str | None
    color: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class ImageMeta:
    """One OME Image (one OMERO image) inside an OME-TIFF, with what gets annotated onto it."""

    index: int
    name: str
    description: str | None
    sizes: dict[str, int]
    pixel_type: str
    dimension_order: str
    channels: tuple[ChannelMeta, ...]
    physical_sizes: dict[str, float | None] = field(default_factory=dict)
    kv_pairs: tuple[tuple[str, str], ...] = ()
    tags: tuple[str, ...] = ()
    comments: tuple[str, ...] = ()
    #: (namespace, text) comments, as ``omero import --annotation-ns/--annotation-text`` make.
    ns_comments: tuple[tuple[str, str], ...] = ()
    #: ``--kv`` pairs: a MapAnnotation of their own, so the file's (made by the import) stays whole.
    extra_kv_pairs: tuple[tuple[str, str], ...] = ()

    @property
    def nbytes(self) -> int:
        """Raw pixel bytes (what pixels mode sends)."""
        n = 1
        for axis in "XYZCT":
            n *= self.sizes.get(axis, 1)
        return n * _bytes_per_pixel(self.pixel_type)


@dataclass
class PushItem:
    """One OME-TIFF to push."""

    path: Path
    sha1: str
    size: int
    images: list[ImageMeta]
    manifest: Path | None = None
    position: str | None = None
    conversion: dict[str, Any] | None = None  # tool, version, options, source from the manifest

    @property
    def key(self) -> str:
        return self.sha1


@dataclass(frozen=True)
class TablesSource:
    """An HDF5 file whose tables become OMERO.tables on the dataset."""

    path: Path
    sha1: str | None
    names: tuple[str, ...]


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


def sha1_of(path: Path, chunk: int = _HASH_CHUNK) -> str:
    """Streaming SHA-1 (the checksum OMERO's managed repository verifies)."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_ome_tiff(path: Path) -> bool:
    return path.name.lower().endswith(OME_TIFF_SUFFIXES)


def read_ome(path: Path) -> Any:
    """The OME model of an OME-TIFF (ome_types.OME), validated when possible.

    Files from other tools are not always schema-valid; those are read without validation rather
    than refused, because OMERO's own import is lenient too.
    """
    from ome_types import from_xml

    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.ome_metadata
    except (OSError, tifffile.TiffFileError, ValueError) as exc:
        raise InputError(f"{path}: not a readable TIFF ({exc})") from None
    if not xml:
        raise InputError(f"{path}: no OME-XML in the first IFD; not an OME-TIFF")
    try:
        return from_xml(xml)
    except Exception as exc:  # ome-types raises pydantic/xmlschema errors of several types
        log.warning("%s: OME-XML does not validate (%s); reading it leniently", path, exc)
        try:
            return from_xml(xml, validate=False)
        except Exception as exc2:
            raise InputError(f"{path}: OME-XML cannot be parsed ({exc2})") from None


def images_from_ome(ome: Any) -> list[ImageMeta]:
    """Per-image facts and annotations from the OME model.

    Annotations are the ones *linked from the Image* (AnnotationRef): MapAnnotations in the
    client namespace give key-value pairs (in file order, repeated keys kept), TagAnnotations give
    tags, CommentAnnotations give comments.  Annotations not linked from an Image are not ours to
    place and are ignored.
    """
    by_id: dict[str, Any] = {}
    sa = ome.structured_annotations
    if sa is not None:
        for group in (sa.map_annotations, sa.tag_annotations, sa.comment_annotations):
            for ann in group:
                by_id[ann.id] = ann
    out: list[ImageMeta] = []
    for index, image in enumerate(ome.images):
        px = image.pixels
        kv: list[tuple[str, str]] = []
        tags: list[str] = []
        comments: list[str] = []
        for ref in image.annotation_refs:
            ann = by_id.get(ref.id)
            if ann is None:
                continue
            kind = type(ann).__name__
            if kind == "MapAnnotation":
                if (ann.namespace or KV_NAMESPACE) == KV_NAMESPACE and ann.value is not None:
                    kv.extend((m.k or "", m.value or "") for m in ann.value.ms)
            elif kind == "TagAnnotation" and ann.value:
                tags.append(ann.value)
            elif kind == "CommentAnnotation" and ann.value:
                comments.append(ann.value)
        channels = []
        for ch in px.channels:
            color = None
            if ch.color is not None:
                r, g, b, *a = ch.color.as_rgb_tuple(alpha=True)
                # pydantic colours give alpha as a 0..1 fraction; OMERO wants 0..255.
                color = (int(r), int(g), int(b), round(float(a[0]) * 255) if a else 255)
            channels.append(ChannelMeta(name=ch.name, color=color))
        out.append(
            ImageMeta(
                index=index,
                name=image.name or f"image {index}",
                description=image.description,
                sizes={
                    "X": px.size_x,
                    "Y": px.size_y,
                    "Z": px.size_z,
                    "C": px.size_c,
                    "T": px.size_t,
                },
                pixel_type=_enum_value(px.type),
                dimension_order=_enum_value(px.dimension_order),
                channels=tuple(channels),
                physical_sizes={
                    "X": px.physical_size_x,
                    "Y": px.physical_size_y,
                    "Z": px.physical_size_z,
                },
                kv_pairs=tuple(kv),
                tags=tuple(dict.fromkeys(tags)),
                comments=tuple(comments),
            )
        )
    return out


def read_manifest(folder: Path) -> dict[str, Any]:
    """The converter's manifest, with a one-line error when it is missing or broken."""
    path = folder / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{folder}: no {MANIFEST_NAME}; not a posdir2ometiff output folder"
        ) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("positions"), dict):
        raise InputError(f"{path}: no 'positions' mapping; not a posdir2ometiff manifest")
    check_manifest_shape(data, path)
    return data


#: Keys the push reads from a manifest and the JSON types it accepts for each (None = null).
_POSITION_TYPES: dict[str, tuple[type, ...]] = {
    "output": (str, type(None)),
    "status": (str, type(None)),
    "error": (str, type(None)),
    "sha1": (str, type(None)),
    "size": (int, type(None)),
    "mtime_ns": (int, type(None)),
    "sources": (list, type(None)),
    "missing_planes": (list, type(None)),
}
_TOP_TYPES: dict[str, tuple[type, ...]] = {
    "metadata": (dict, type(None)),
    "tables": (dict, type(None)),
}
_METADATA_TYPES: dict[str, tuple[type, ...]] = {
    "description": (str, type(None)),
    "tags": (list, type(None)),
    "key_values": (list, type(None)),
    "omero_project": (str, type(None)),
    "omero_dataset": (str, type(None)),
}
_TABLES_TYPES: dict[str, tuple[type, ...]] = {
    "path": (str, type(None)),
    "sha1": (str, type(None)),
    "names": (list, type(None)),
}


def check_manifest_shape(data: dict[str, Any], path: Path) -> None:
    """Refuse, with the file and key named, a manifest whose values have the wrong JSON type.

    A manifest may come from someone else's output folder, so every key the push reads is checked
    here once: later code can then rely on the types instead of failing with a traceback deep in
    the push (``int(entry["size"])`` on a list, ``.get`` on a string).  ``bool`` is refused where
    a number is expected, because JSON ``true`` is not a size.
    """

    def check(obj: dict[str, Any], types: dict[str, tuple[type, ...]], where: str) -> None:
        for key, allowed in types.items():
            value = obj.get(key)
            if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
                names = "/".join("null" if t is type(None) else _JSON_NAMES[t] for t in allowed)
                raise InputError(
                    f"{path}: {where}{key} is {_json_type(value)}, expected {names}"
                )

    check(data, _TOP_TYPES, "")
    check(data.get("metadata") or {}, _METADATA_TYPES, "metadata.")
    check(data.get("tables") or {}, _TABLES_TYPES, "tables.")
    for name, entry in data["positions"].items():
        if not isinstance(entry, dict):
            raise InputError(
                f"{path}: positions.{name} is {_json_type(entry)}, expected an object"
            )
        check(entry, _POSITION_TYPES, f"positions.{name}.")
        for key in ("size", "mtime_ns"):
            if isinstance(entry.get(key), int) and entry[key] < 0:
                raise InputError(f"{path}: positions.{name}.{key} is negative ({entry[key]})")


_JSON_NAMES = {str: "a string", int: "an integer", list: "an array", dict: "an object"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number"
    return _JSON_NAMES.get(type(value), type(value).__name__)


def contained_path(folder: Path, relative: str, manifest: Path, key: str) -> Path:
    """``folder / relative`` resolved, refused unless it stays inside ``folder``.

    A manifest can come from someone else's output folder; without this check a crafted
    ``"output": "../../elsewhere.ome.tiff"`` or ``"tables": {"path": "/etc/passwd"}`` would make
    the push upload any local file.  ``..`` and symbolic links are resolved first (a link inside
    the folder that points out of it is refused too): the check CPython's ``tarfile.data_filter``
    makes (``Lib/tarfile.py``, ``_get_filtered_attrs``: realpath of the member, then refuse it
    when it is not under the realpath of the destination).
    """
    root = folder.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        raise InputError(
            f"{manifest}: {key} {relative!r} points outside the manifest's folder ({target}); "
            "refused"
        )
    return target


def items_from_manifest(
    folder: Path, manifest: dict[str, Any]
) -> tuple[list[PushItem], list[tuple[Path, str]]]:
    """Push items for the manifest's converted positions; failed or missing ones are skipped."""
    items: list[PushItem] = []
    skipped: list[tuple[Path, str]] = []
    conversion = {
        "tool": manifest.get("tool"),
        "version": manifest.get("version"),
        "created": manifest.get("created"),
        "options": manifest.get("options"),
        "source": manifest.get("source"),
    }
    for name, entry in sorted(manifest["positions"].items()):
        out = entry.get("output") or f"{name}.ome.tiff"
        path = contained_path(folder, out, folder / MANIFEST_NAME, f"positions.{name}.output")
        if entry.get("status", "ok") != "ok":
            skipped.append((path, f"conversion {entry.get('status')}: {entry.get('error') or '?'}"))
            continue
        if not path.is_file():
            skipped.append((path, "listed in the manifest but missing"))
            continue
        st = path.stat()
        size = st.st_size
        sha1 = entry.get("sha1")
        stale = (entry.get("size") is not None and int(entry["size"]) != size) or (
            entry.get("mtime_ns") is not None and int(entry["mtime_ns"]) != st.st_mtime_ns
        )
        if not sha1 or stale:
            # A manifest older than the file (or without checksums): trust the bytes, not the list.
            log.warning("%s: changed since the manifest was written; hashing the file", path)
            sha1 = sha1_of(path)
        images = images_from_ome(read_ome(path))
        sources = entry.get("sources")
        items.append(
            PushItem(
                path=path,
                sha1=str(sha1),
                size=size,
                images=images,
                manifest=folder / MANIFEST_NAME,
                position=name,
                conversion={
                    **conversion,
                    "position": name,
                    "n_sources": len(sources) if isinstance(sources, list) else None,
                    "missing_planes": len(entry.get("missing_planes") or []),
                },
            )
        )
    return items, skipped


def _check_tables_readable(path: Path) -> None:
    """Open the HDF5 tables now (a few KB, no network): an unreadable file is one line before
    anything is pushed, not an HDF5 back trace after every image is."""
    from posdir2ometiff.metadata.tables import TablesReadError, read_tables

    try:
        read_tables(path)
    except TablesReadError as exc:
        raise InputError(str(exc)) from None


def item_from_file(path: Path) -> PushItem:
    """A push item for an OME-TIFF from anywhere: hashed here, annotations from its OME-XML."""
    path = path.resolve()
    images = images_from_ome(read_ome(path))
    if not images:
        raise InputError(f"{path}: OME-XML lists no Image")
    return PushItem(path=path, sha1=sha1_of(path), size=path.stat().st_size, images=images)


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
            tinfo = manifest.get("tables") or {}
            if tinfo.get("path"):
                tpath = contained_path(p, tinfo["path"], p / MANIFEST_NAME, "tables.path")
                if tpath.is_file():
                    _check_tables_readable(tpath)
                    tables.append(
                        TablesSource(
                            path=tpath,
                            sha1=tinfo.get("sha1"),
                            names=tuple(tinfo.get("names") or ()),
                        )
                    )
                else:
                    log.warning("%s: tables file %s listed but missing", p, tpath)
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


_BYTES = {
    "int8": 1,
    "uint8": 1,
    "int16": 2,
    "uint16": 2,
    "int32": 4,
    "uint32": 4,
    "float": 4,
    "double": 8,
    "bit": 1,
}


def _bytes_per_pixel(pixel_type: str) -> int:
    return _BYTES.get(pixel_type, 2)


def _enum_value(v: Any) -> str:
    return str(getattr(v, "value", v))
