"""The stand-in's object store: omero.model objects kept in SQLite so a restart keeps everything.

Why this shape: OMERO keeps one row per object in PostgreSQL and hands clients graphs whose
references are either *loaded* objects or *unloaded* proxies (``ImageI(5, False)``). The store does
the same on a small scale. Every object is kept "flat" — its many-to-one references replaced by
unloaded proxies and its collections left unloaded — as one pickled row keyed by its *root* class
(the id space OMERO uses: a TagAnnotation and a MapAnnotation share the Annotation ids). Collections
are rebuilt on read from the back-references of their elements (``Channel.pixels`` → ``Pixels.channels``),
so nothing is stored twice and links added later show up everywhere.

All objects are also held in memory (flat), which keeps the query evaluator (``hql.py``) simple;
SQLite is the durable copy, written in one transaction per save. A stand-in for tests, not a database.
"""

from __future__ import annotations

import io
import logging
import pickle
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import omero
import omero.model  # noqa: F401  (loads the model package)
from omero import ObjectFactoryRegistrar  # noqa: F401  (imports every omero.model.*I class)
from omero.rtypes import rlong, rstring, rtime

log = logging.getLogger(__name__)

#: Collections that OMERO defines by a back-reference in the element class:
#: (class, collection) -> (element root class, field of the element pointing back).
#: ``<X>.annotationLinks`` -> ``<X>AnnotationLink.parent`` is handled generically.
INVERSE: dict[tuple[str, str], tuple[str, str]] = {
    ("Project", "datasetLinks"): ("ProjectDatasetLink", "parent"),
    ("Dataset", "projectLinks"): ("ProjectDatasetLink", "child"),
    ("Dataset", "imageLinks"): ("DatasetImageLink", "parent"),
    ("Image", "datasetLinks"): ("DatasetImageLink", "child"),
    ("Image", "pixels"): ("Pixels", "image"),
    ("Image", "rois"): ("Roi", "image"),
    ("Image", "wellSamples"): ("WellSample", "image"),
    ("Image", "folderLinks"): ("FolderImageLink", "child"),
    ("Pixels", "channels"): ("Channel", "pixels"),
    ("Pixels", "planeInfo"): ("PlaneInfo", "pixels"),
    ("Pixels", "settings"): ("RenderingDef", "pixels"),
    ("Pixels", "thumbnails"): ("Thumbnail", "pixels"),
    ("Pixels", "pixelsFileMaps"): ("PixelsOriginalFileMap", "child"),
    ("OriginalFile", "pixelsFileMaps"): ("PixelsOriginalFileMap", "parent"),
    ("Roi", "shapes"): ("Shape", "roi"),
    ("Fileset", "usedFiles"): ("FilesetEntry", "fileset"),
    ("Fileset", "images"): ("Image", "fileset"),
    ("Fileset", "jobLinks"): ("FilesetJobLink", "parent"),
    ("Experimenter", "groupExperimenterMap"): ("GroupExperimenterMap", "child"),
    ("ExperimenterGroup", "groupExperimenterMap"): ("GroupExperimenterMap", "parent"),
    ("Screen", "plateLinks"): ("ScreenPlateLink", "parent"),
    ("Plate", "screenLinks"): ("ScreenPlateLink", "child"),
    ("Plate", "wells"): ("Well", "plate"),
    ("Well", "wellSamples"): ("WellSample", "well"),
}

#: Enumerations seeded on first start (OMERO ships these in its database).
ENUMERATIONS: dict[str, list[str]] = {
    "PixelsType": ["bit", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float", "double",
                   "complex", "double-complex"],
    "DimensionOrder": ["XYZCT", "XYZTC", "XYCTZ", "XYCZT", "XYTCZ", "XYTZC"],
    "ChecksumAlgorithm": ["Adler-32", "CRC-32", "MD5-128", "Murmur3-32", "Murmur3-128",
                          "SHA1-160", "File-Size-64"],
    "Format": ["Companion/Unknown", "OMETiff", "Tiff", "PNG", "Directory", "text/plain",
               "application/octet-stream", "OMERO.tables", "Repository"],
    "AcquisitionMode": ["WideField", "LaserScanningConfocalMicroscopy", "SpinningDiskConfocal",
                        "Other", "Unknown"],
    "ContrastMethod": ["Brightfield", "Phase", "DIC", "Fluorescence", "Other", "Unknown"],
    "Illumination": ["Transmitted", "Epifluorescence", "Oblique", "NonLinear", "Other", "Unknown"],
    "PhotometricInterpretation": ["RGB", "ARGB", "CMYK", "HSV", "Monochrome", "ColorMap"],
    "EventType": ["Import", "Internal", "Shoola", "User", "Task", "Test", "Processing", "FullText",
                  "Sessions"],
    "Immersion": ["Oil", "Water", "WaterDipping", "Air", "Multi", "Glycerol", "Other", "Unknown"],
    "Correction": ["UV", "PlanApo", "PlanFluor", "SuperFluor", "VioletCorrected", "Achro",
                   "Achromat", "Fluor", "Fl", "Fluar", "Neofluar", "Fluotar", "Apo", "Other",
                   "Unknown"],
    "Medium": ["Air", "Oil", "Water", "Glycerol", "Other"],
    "ExperimentType": ["FP", "FRET", "TimeLapse", "FourDPlus", "Screen", "Immunocytochemistry",
                       "Immunofluorescence", "FISH", "Electrophysiology", "IonImaging",
                       "Colocalization", "PGIDocumentation", "FluorescenceLifetime",
                       "SpectralImaging", "Photobleaching", "Other", "Unknown"],
    "RenderingModel": ["rgb", "greyscale"],
    "Family": ["linear", "polynomial", "exponential", "logarithmic"],
    "MicroscopeType": ["Upright", "Inverted", "Dissection", "Electrophysiology", "Other",
                       "Unknown"],
    "DetectorType": ["CCD", "IntensifiedCCD", "AnalogVideo", "PMT", "Photodiode", "Spectroscopy",
                     "LifetimeImaging", "CorrelationSpectroscopy", "FTIR", "EMCCD", "APD", "CMOS",
                     "EBCCD", "Other", "Unknown"],
    "JobStatus": ["Submitted", "Resubmitted", "Queued", "Requeued", "Running", "Error",
                  "Waiting", "Finished", "Cancelled"],
}

#: PixelsType.bitSize as in OMERO's database.
_BIT_SIZES = {"bit": 1, "int8": 8, "uint8": 8, "int16": 16, "uint16": 16, "int32": 32,
              "uint32": 32, "float": 32, "double": 64, "complex": 64, "double-complex": 128}

#: The security roles OMERO always has (ids as in a fresh OMERO database).
ROOT_ID, GUEST_ID = 0, 1
SYSTEM_GROUP_ID, USER_GROUP_ID, GUEST_GROUP_ID = 0, 1, 2
#: Permissions of the stand-in's working group: read-annotate, the common lab setting.
GROUP_PERMS = "rwra--"


class StoreError(Exception):
    """A save or lookup the store cannot honour (turned into omero.ValidationException by services)."""


# --------------------------------------------------------------------------- class helpers

def model_class(kind: str) -> type:
    """The omero.model ``<kind>I`` class, e.g. ``ImageI`` for "Image"."""
    cls = getattr(omero.model, kind + "I", None)
    if cls is None:
        raise StoreError(f"unknown OMERO model class {kind!r}")
    return cls


def slice_class(kind: str) -> type:
    """The abstract Slice class for *kind* (``omero.model.Image``), used for subclass tests."""
    cls = getattr(omero.model, kind, None)
    if cls is None or not isinstance(cls, type):
        raise StoreError(f"unknown OMERO model class {kind!r}")
    return cls


def kind_of(obj: Any) -> str:
    """The concrete model class name of an object: ``TagAnnotation`` for a ``TagAnnotationI``."""
    return obj.ice_staticId().split("::")[-1]


def root_of_kind(kind: str) -> str:
    """The root class of *kind*'s hierarchy, whose id space it shares (TagAnnotation -> Annotation)."""
    cls = slice_class(kind)
    iobject = omero.model.IObject
    root = kind
    for klass in cls.__mro__:
        if klass is iobject:
            break
        if isinstance(klass, type) and issubclass(klass, iobject) and not klass.__name__.endswith("I"):
            root = klass.__name__
    return root


def is_subkind(kind: str, of: str) -> bool:
    """Whether objects of *kind* match a query over *of* (HQL polymorphism: Annotation matches tags)."""
    try:
        return issubclass(slice_class(kind), slice_class(of))
    except StoreError:
        return False


def fields_of(cls: type) -> tuple[str, ...]:
    """The model fields of a generated class (from its ``_field_info``), without "details"."""
    info = getattr(cls, "_field_info", None)
    if info is None:
        return ()
    return tuple(f for f in info._fields if f != "details")


def is_collection(obj: Any, field: str) -> bool:
    """Whether *field* of a model object is a one-to-many collection (``_<field>Seq`` exists)."""
    return hasattr(obj, f"_{field}Seq")


def is_enum_kind(kind: str) -> bool:
    """Enumerations: classes with a ``value`` and nothing else but PixelsType's ``bitSize``."""
    try:
        fields = fields_of(model_class(kind))
    except StoreError:
        return False
    return "value" in fields and set(fields) <= {"value", "bitSize"}


def collection_inverse(kind: str, field: str) -> tuple[str, str] | None:
    """Where the elements of ``<kind>.<field>`` live: (element root class, back-reference field)."""
    for k in _mro_kinds(kind):
        if (k, field) in INVERSE:
            return INVERSE[(k, field)]
        if field == "annotationLinks":
            link = f"{k}AnnotationLink"
            if getattr(omero.model, link + "I", None) is not None:
                return (link, "parent")
    return None


def _mro_kinds(kind: str) -> list[str]:
    """*kind* and its model superclasses, most specific first."""
    out = []
    for klass in slice_class(kind).__mro__:
        if klass is omero.model.IObject:
            break
        if not klass.__name__.endswith("I") and issubclass(klass, omero.model.IObject):
            out.append(klass.__name__)
    return out


def unloaded(obj: Any) -> Any:
    """An unloaded proxy (``ImageI(5, False)``) of a saved object."""
    return model_class(kind_of(obj))(obj.getId().getValue(), False)


def _check_not_null(obj: Any) -> None:
    """Refuse an object whose not-null fields (per omero-py's ``_field_info``) are empty."""
    info = getattr(type(obj), "_field_info", None)
    if info is None:
        return
    for name in fields_of(type(obj)):
        if getattr(info, name).nullable or is_collection(obj, name):
            continue
        if getattr(obj, "_" + name, None) is None:
            raise StoreError(f"{kind_of(obj)}.{name} is a not-null property: OMERO refuses "
                             f"to save a {kind_of(obj)} without it")


class _Unpickler(pickle.Unpickler):
    """Resolves ``omero.model.XI`` classes even if the lazy omero.model namespace has not loaded them."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "omero.model" and not hasattr(omero.model, name):
            __import__(f"omero_model_{name}")
        return super().find_class(module, name)


def _loads(blob: bytes) -> Any:
    return _Unpickler(io.BytesIO(blob)).load()


def _dumps(obj: Any) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


# --------------------------------------------------------------------------- the store

def _link_key(flat: Any) -> tuple[int, int, int] | None:
    """(parent id, child id, owner id) of a stored link, None for anything else."""
    if not kind_of(flat).endswith("Link"):
        return None
    parent, child = getattr(flat, "_parent", None), getattr(flat, "_child", None)
    details = flat.getDetails()
    owner = details.owner if details is not None else None
    if parent is None or child is None or owner is None or parent.getId() is None \
            or child.getId() is None:
        return None
    return parent.getId().getValue(), child.getId().getValue(), owner.getId().getValue()


class ObjectStore:
    """OMERO-like persistence of omero.model objects in ``<store_dir>/objects.sqlite``.

    Thread-safety: every public method takes the store's own RLock (servants run on Ice
    thread-pool threads). Objects handed out are always fresh copies: callers may mutate them.

    Files: ``files_dir`` (``<store_dir>/files``) holds bulk data; ``blob_dir(kind)`` gives
    ``files/<kind>/`` (e.g. ``blob_dir("pixels") / str(pixels_id)``, ``blob_dir("originals")``).
    """

    def __init__(self, store_dir: Path, user: str = "root") -> None:
        self.store_dir = Path(store_dir)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.files_dir = self.store_dir / "files"
        self.files_dir.mkdir(exist_ok=True)
        self.lock = threading.RLock()
        self._db = sqlite3.connect(self.store_dir / "objects.sqlite", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS objects (root TEXT NOT NULL, id INTEGER NOT NULL,"
                         " kind TEXT NOT NULL, blob BLOB NOT NULL, PRIMARY KEY (root, id))")
        self._db.execute("CREATE TABLE IF NOT EXISTS seq (root TEXT PRIMARY KEY, next INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        # root -> id -> (kind, blob); blobs are the flat pickled objects
        self._rows: dict[str, dict[int, tuple[str, bytes]]] = {}
        # cache of unpickled flat objects for queries (never handed out)
        self._flat: dict[tuple[str, int], Any] = {}
        # (element root, back field) -> target id -> set of element ids
        self._back: dict[tuple[str, str], dict[int, set[int]]] = {}
        self._seq: dict[str, int] = {}
        for root, oid, kind, blob in self._db.execute("SELECT root, id, kind, blob FROM objects"):
            self._rows.setdefault(root, {})[oid] = (kind, blob)
            self._index(root, oid, self._flat_obj(root, oid))
        for root, nxt in self._db.execute("SELECT root, next FROM seq"):
            self._seq[root] = nxt
        for root, rows in self._rows.items():  # never hand out an id that is in use
            self._seq[root] = max(self._seq.get(root, 1), max(rows) + 1)
        self._seed(user)

    # ---------------------------------------------------------------- lifecycle

    def close(self) -> None:
        """Close SQLite (idempotent); the in-memory copy is dropped with the object."""
        with self.lock:
            if self._db is not None:
                self._db.close()
                self._db = None  # type: ignore[assignment]

    def blob_dir(self, name: str) -> Path:
        """``files/<name>/`` inside the store, created on demand (pixels, originals, tables...)."""
        path = self.files_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ---------------------------------------------------------------- seeding

    def _seed(self, user: str) -> None:
        """Create what a fresh OMERO database holds: roles, groups, users, enumerations."""
        with self.lock:
            if self.meta("seeded") == "1":
                return
            now = int(time.time() * 1000)
            objs: list[Any] = []
            groups = {
                SYSTEM_GROUP_ID: ("system", "rwr---"),
                USER_GROUP_ID: ("user", "rwr---"),
                GUEST_GROUP_ID: ("guest", "rwr---"),
            }
            for gid, (name, perms) in groups.items():
                g = omero.model.ExperimenterGroupI(gid, True)
                g.name = rstring(name)
                g.ldap = omero.rtypes.rbool(False)
                g.details.permissions = omero.model.PermissionsI(perms)
                objs.append(g)
            root = self._experimenter(ROOT_ID, "root", "root", "root")
            guest = self._experimenter(GUEST_ID, "guest", "Guest", "Account")
            objs += [root, guest]
            memberships = [(SYSTEM_GROUP_ID, ROOT_ID, True), (USER_GROUP_ID, ROOT_ID, False),
                           (GUEST_GROUP_ID, GUEST_ID, False)]
            if user != "root":
                work = omero.model.ExperimenterGroupI(3, True)
                work.name = rstring("default")
                work.ldap = omero.rtypes.rbool(False)
                work.details.permissions = omero.model.PermissionsI(GROUP_PERMS)
                objs.append(work)
                objs.append(self._experimenter(2, user, user.capitalize(), "User"))
                memberships += [(3, 2, True), (USER_GROUP_ID, 2, False)]
            for gid, uid, owner in memberships:
                m = omero.model.GroupExperimenterMapI()
                m.parent = omero.model.ExperimenterGroupI(gid, False)
                m.child = omero.model.ExperimenterI(uid, False)
                m.owner = omero.rtypes.rbool(owner)
                objs.append(m)
            for kind, values in ENUMERATIONS.items():
                for value in values:
                    e = model_class(kind)()
                    e.value = rstring(value)
                    if kind == "PixelsType":
                        e.bitSize = omero.rtypes.rint(_BIT_SIZES.get(value, 0))
                    objs.append(e)
            owner = omero.model.ExperimenterI(ROOT_ID, False)
            group = omero.model.ExperimenterGroupI(SYSTEM_GROUP_ID, False)
            first = [o for o in objs if kind_of(o) in ("Experimenter", "ExperimenterGroup")]
            rest = [o for o in objs if kind_of(o) not in ("Experimenter", "ExperimenterGroup")]
            for batch in (first, rest):
                self.save_all(batch, owner=owner, group=group, now_ms=now, event_type="Internal",
                              keep_ids=True)
            self.set_meta("seeded", "1")

    @staticmethod
    def _experimenter(uid: int, name: str, first: str, last: str) -> Any:
        e = omero.model.ExperimenterI(uid, True)
        e.omeName = rstring(name)
        e.firstName = rstring(first)
        e.lastName = rstring(last)
        e.email = rstring("")
        e.ldap = omero.rtypes.rbool(False)
        return e

    def meta(self, key: str) -> str | None:
        """A value from the store's own key-value table (None if absent)."""
        with self.lock:
            row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
            return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a value in the store's own key-value table."""
        with self.lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # ---------------------------------------------------------------- ids and indexes

    def _next_id(self, root: str) -> int:
        nxt = self._seq.get(root, 1)
        self._seq[root] = nxt + 1
        return nxt

    def _index(self, root: str, oid: int, flat: Any) -> None:
        for field in fields_of(type(flat)):
            ref = getattr(flat, "_" + field, None)
            if isinstance(ref, omero.model.IObject) and ref.getId() is not None:
                self._back.setdefault((root, field), {}).setdefault(ref.getId().getValue(), set()).add(oid)

    def _unindex(self, root: str, oid: int, flat: Any) -> None:
        for field in fields_of(type(flat)):
            ref = getattr(flat, "_" + field, None)
            if isinstance(ref, omero.model.IObject) and ref.getId() is not None:
                self._back.get((root, field), {}).get(ref.getId().getValue(), set()).discard(oid)

    def _flat_obj(self, root: str, oid: int) -> Any:
        key = (root, oid)
        flat = self._flat.get(key)
        if flat is None:
            flat = _loads(self._rows[root][oid][1])
            self._flat[key] = flat
        return flat

    # ---------------------------------------------------------------- reading

    def exists(self, kind: str, oid: int) -> bool:
        """Whether an object of *kind* (or a subclass) with this id is stored."""
        with self.lock:
            root = root_of_kind(kind)
            row = self._rows.get(root, {}).get(oid)
            return row is not None and is_subkind(row[0], kind)

    def kind(self, kind: str, oid: int) -> str | None:
        """The concrete class stored under *kind*/id (``TagAnnotation`` for Annotation 7), or None."""
        with self.lock:
            row = self._rows.get(root_of_kind(kind), {}).get(oid)
            return row[0] if row and is_subkind(row[0], kind) else None

    def flat(self, kind: str, oid: int) -> Any | None:
        """The stored flat object (references unloaded). Read-only: shared with the query engine."""
        with self.lock:
            root = root_of_kind(kind)
            if oid not in self._rows.get(root, {}):
                return None
            flat = self._flat_obj(root, oid)
            return flat if is_subkind(kind_of(flat), kind) else None

    def resolve(self, ref: Any) -> Any | None:
        """The stored flat object an (unloaded) reference points to, or None."""
        if ref is None or ref.getId() is None:
            return None
        return self.flat(kind_of(ref), ref.getId().getValue())

    def all(self, kind: str) -> Iterator[Any]:
        """Every stored flat object of *kind* or its subclasses, in id order (read-only)."""
        with self.lock:
            root = root_of_kind(kind)
            ids = sorted(self._rows.get(root, {}))
            rows = [(oid, self._rows[root][oid][0]) for oid in ids]
        for oid, k in rows:
            if is_subkind(k, kind):
                with self.lock:
                    if oid in self._rows.get(root, {}):
                        yield self._flat_obj(root, oid)

    def find(self, kind: str, predicate: Callable[[Any], bool]) -> list[Any]:
        """Loaded copies of every *kind* object whose flat form satisfies *predicate*."""
        return [self.load(kind_of(f), f.getId().getValue()) for f in self.all(kind) if predicate(f)]

    def children(self, kind: str, oid: int, field: str) -> list[Any]:
        """Flat elements of the collection ``<kind>.<field>`` of object *oid* (e.g. Pixels.channels)."""
        inverse = collection_inverse(kind, field)
        if inverse is None:
            return []
        elem_root, back = inverse
        with self.lock:
            ids = sorted(self._back.get((root_of_kind(elem_root), back), {}).get(oid, ()))
            out = []
            for eid in ids:
                flat = self._flat_obj(root_of_kind(elem_root), eid)
                if is_subkind(kind_of(flat), elem_root):
                    out.append(flat)
            return out

    def load(self, kind: str, oid: int, fetch: Iterable[str] = (), details: bool = True) -> Any | None:
        """A fresh, loaded copy of one object, or None.

        *fetch* names paths to load as HQL's ``join fetch`` does: ``"pixels"``,
        ``"pixels.channels.logicalChannel"``, ``"annotationLinks.child"``, ``"file"``. Enumerations
        are always loaded; with *details* the owner, group and creation/update events are too.
        """
        with self.lock:
            flat = self.flat(kind, oid)
            if flat is None:
                return None
            obj = _loads(self._rows[root_of_kind(kind)][oid][1])
            tree: dict[str, Any] = {}
            for path in fetch:
                node = tree
                for seg in path.split("."):
                    node = node.setdefault(seg, {})
            self._materialize(obj, tree, details)
            return obj

    def materialize(self, flat_copy: Any, fetch: Iterable[str] = ()) -> Any:
        """Load *fetch* paths and details into a copy obtained from :meth:`copy`."""
        tree: dict[str, Any] = {}
        for path in fetch:
            node = tree
            for seg in path.split("."):
                node = node.setdefault(seg, {})
        with self.lock:
            self._materialize(flat_copy, tree, True)
        return flat_copy

    def copy(self, flat: Any) -> Any:
        """A private copy of a flat object (its references still unloaded)."""
        with self.lock:
            return _loads(self._rows[root_of_kind(kind_of(flat))][flat.getId().getValue()][1])

    def _materialize(self, obj: Any, tree: dict[str, Any], details: bool) -> None:
        kind = kind_of(obj)
        oid = obj.getId().getValue()
        if details:
            self._load_details(obj)
        for field in fields_of(type(obj)):
            sub = tree.get(field)
            if is_collection(obj, field):
                if sub is None:
                    continue
                elems = []
                for flat in self.children(kind, oid, field):
                    elem = self.copy(flat)
                    self._materialize(elem, sub, details)
                    elems.append(elem)
                setattr(obj, f"_{field}Seq", elems)
                setattr(obj, f"_{field}Loaded", True)
                continue
            ref = getattr(obj, "_" + field, None)
            if not isinstance(ref, omero.model.IObject) or ref.getId() is None:
                continue
            rkind = kind_of(ref)
            if sub is None and not is_enum_kind(rkind):
                continue
            target = self.resolve(ref)
            if target is None:
                continue
            loaded = self.copy(target)
            self._materialize(loaded, sub or {}, details and sub is not None)
            setattr(obj, "_" + field, loaded)

    def _load_details(self, obj: Any) -> None:
        d = obj.getDetails()
        if d is None:
            return
        for name in ("owner", "group", "creationEvent", "updateEvent"):
            ref = getattr(d, "_" + name, None)
            if isinstance(ref, omero.model.IObject) and ref.getId() is not None and not ref.isLoaded():
                target = self.resolve(ref)
                if target is not None:
                    loaded = self.copy(target)
                    setattr(d, "_" + name, loaded)

    # ---------------------------------------------------------------- writing

    def save(self, obj: Any, owner: Any, group: Any, now_ms: int | None = None,
             event_type: str = "User", keep_ids: bool = False, validate: bool = False) -> Any:
        """Save an object graph as IUpdate.saveAndReturnObject does; returns the graph with ids.

        New objects (``id`` None) get ids from their root class's sequence; loaded objects with
        ids replace the stored row (a merge); unloaded references must point to stored objects.
        Collections that are loaded are walked, so ``project.linkDataset(DatasetI())`` saves the
        link and the new dataset. Every saved object gets ``details.owner``/``group`` and a new
        update event (and a creation event when new). *keep_ids* (seeding only) creates loaded
        objects under the ids they carry, as OMERO's database scripts do for root and system.
        With *validate* (what clients send through IUpdate/IContainer), a not-null field left
        empty is refused with ``StoreError`` as OMERO's database refuses it.
        """
        return self.save_all([obj], owner, group, now_ms, event_type, keep_ids, validate)[0]

    def save_all(self, objs: list[Any], owner: Any, group: Any, now_ms: int | None = None,
                 event_type: str = "User", keep_ids: bool = False,
                 validate: bool = False) -> list[Any]:
        """Save several graphs in one transaction (IUpdate.saveAndReturnArray); shared objects once."""
        with self.lock:
            now_ms = int(time.time() * 1000) if now_ms is None else now_ms
            memo: dict[int, tuple[str, int]] = {}
            order: list[tuple[Any, str, int, bool]] = []
            seq_before = dict(self._seq)
            try:
                for obj in objs:
                    self._visit(obj, memo, order, keep_ids)
                if validate:
                    for o, _root, _oid, _new in order:
                        _check_not_null(o)
            except BaseException:
                self._seq = seq_before
                raise
            event = self._new_event(now_ms, event_type, owner, group)
            rows = []
            for o, root, oid, new in order:
                o.setId(rlong(oid))
                if hasattr(o, "_version") and o._version is None:
                    o._version = omero.rtypes.rint(0)
                self._set_details(o, root, oid, new, owner, group, event)
            try:
                for o, root, oid, _new in order:
                    flat = self._flatten(o, memo)
                    rows.append((root, oid, kind_of(o), _dumps(flat), flat))
                self._check_unique_links(rows)
            except BaseException:
                self._seq = seq_before
                raise
            self._write(rows)
            return objs

    def _check_unique_links(self, rows: list[tuple[str, int, str, bytes, Any]]) -> None:
        """One link per (parent, child, owner), as OMERO's database constraint says.

        Every link table of OMERO's schema has ``UNIQUE (parent, child, owner_id)``
        (ome/openmicroscopy ``sql/psql/OMERO5.4__0/schema.sql``); the violation reaches the
        client as ``omero.ValidationException`` (ome/omero-server
        ``src/main/java/ome/services/util/ServiceHandler.java``: a
        ``DataIntegrityViolationException`` becomes a ``ValidationException``).
        """
        batch: dict[tuple[str, int, int, int], int] = {}
        for root, oid, _kind, _blob, flat in rows:
            key = _link_key(flat)
            if key is None:
                continue
            other = batch.get((root, *key))
            if other is None:
                for lid in self._back.get((root, "parent"), {}).get(key[0], ()):
                    if lid != oid and _link_key(self._flat_obj(root, lid)) == key:
                        other = lid
                        break
            if other is not None and other != oid:
                parent, child, owner = key
                raise StoreError(
                    f"could not execute statement; constraint [{root.lower()}_parent_key]: "
                    f"duplicate key value violates unique constraint: Key (parent, child, "
                    f"owner_id)=({parent}, {child}, {owner}) already exists ({root}:{other})")
            batch[(root, *key)] = oid

    @property
    def database_uuid(self) -> str:
        """A uuid naming this store (IConfig.getDatabaseUuid), made on first start."""
        value = self.meta("uuid")
        if value is None:
            import uuid
            value = str(uuid.uuid4())
            self.set_meta("uuid", value)
        return value

    def _new_event(self, now_ms: int, event_type: str, owner: Any, group: Any) -> Any:
        ev = omero.model.EventI()
        ev.time = rtime(now_ms)
        ev.experimenter = omero.model.ExperimenterI(owner.getId().getValue(), False)
        ev.experimenterGroup = omero.model.ExperimenterGroupI(group.getId().getValue(), False)
        etype = self._enum_ref("EventType", event_type)
        if etype is not None:
            ev.type = etype
        oid = self._next_id("Event")
        ev.setId(rlong(oid))
        d = ev.getDetails()
        d.owner = omero.model.ExperimenterI(owner.getId().getValue(), False)
        d.group = omero.model.ExperimenterGroupI(group.getId().getValue(), False)
        d.permissions = omero.model.PermissionsI("rw----")
        flat = _dumps(ev)
        self._write([("Event", oid, "Event", flat, _loads(flat))])
        return omero.model.EventI(oid, False)

    def _enum_ref(self, kind: str, value: str) -> Any | None:
        for flat in self.all(kind):
            if flat.getValue() is not None and flat.getValue().getValue() == value:
                return model_class(kind)(flat.getId().getValue(), False)
        return None

    def enum(self, kind: str, value: str) -> Any | None:
        """The loaded enumeration entry ``kind``/``value`` (e.g. PixelsType "uint16"), or None."""
        ref = self._enum_ref(kind, value)
        return None if ref is None else self.load(kind, ref.getId().getValue())

    def _visit(self, obj: Any, memo: dict[int, tuple[str, int]], order: list,
               keep_ids: bool = False) -> tuple[str, int] | None:
        if obj is None:
            return None
        key = id(obj)
        if key in memo:
            return memo[key]
        kind = kind_of(obj)
        root = root_of_kind(kind)
        if not obj.isLoaded():
            if obj.getId() is None:
                raise StoreError(f"unloaded {kind} without an id")
            oid = obj.getId().getValue()
            if not self.exists(kind, oid):
                raise StoreError(f"{kind}:{oid} does not exist")
            memo[key] = (root, oid)
            return memo[key]
        if obj.getId() is None:
            oid, new = self._next_id(root), True
        else:
            oid, new = obj.getId().getValue(), False
            if keep_ids and oid not in self._rows.get(root, {}):
                new = True
                self._seq[root] = max(self._seq.get(root, 1), oid + 1)
            elif not self.exists(kind, oid):
                raise StoreError(f"{kind}:{oid} does not exist (it cannot be updated)")
        memo[key] = (root, oid)
        for field in fields_of(type(obj)):
            if is_collection(obj, field):
                if getattr(obj, f"_{field}Loaded", False):
                    for elem in getattr(obj, f"_{field}Seq") or []:
                        if isinstance(elem, omero.model.IObject):
                            self._visit(elem, memo, order, keep_ids)
                continue
            value = getattr(obj, "_" + field, None)
            if isinstance(value, omero.model.IObject):
                self._visit(value, memo, order, keep_ids)
        order.append((obj, root, oid, new))
        return memo[key]

    def _set_details(self, o: Any, root: str, oid: int, new: bool, owner: Any, group: Any,
                     event: Any) -> None:
        old = None if new else self.flat(kind_of(o), oid)
        d = omero.model.DetailsI()
        od = old.getDetails() if old is not None else None
        if od is not None and od.owner is not None:
            d.owner = od.owner
            d.group = od.group
            d.creationEvent = od.creationEvent
            d.permissions = od.permissions
            d.externalInfo = od.externalInfo
        else:
            d.owner = omero.model.ExperimenterI(owner.getId().getValue(), False)
            d.group = omero.model.ExperimenterGroupI(group.getId().getValue(), False)
            d.creationEvent = event
            given = o.getDetails()
            perms = given.permissions if given is not None else None
            if perms is None and od is not None:
                perms = od.permissions
            if perms is None:  # new objects take their group's permissions, as in OMERO
                gflat = self.flat("ExperimenterGroup", d.group.getId().getValue())
                gdetails = gflat.getDetails() if gflat is not None else None
                perms = gdetails.permissions if gdetails is not None else None
            d.permissions = perms or omero.model.PermissionsI(GROUP_PERMS)
            if given is not None and given.externalInfo is not None:
                d.externalInfo = given.externalInfo
        d.updateEvent = event if event is not None else d.creationEvent
        o._details = d

    def _flatten(self, o: Any, memo: dict[int, tuple[str, int]]) -> Any:
        cls = type(o)
        flat = cls(o.getId().getValue(), True)
        if hasattr(o, "_version"):
            flat._version = o._version
        for field in fields_of(cls):
            attr = "_" + field
            if is_collection(o, field):
                setattr(flat, f"{attr}Seq", [])
                setattr(flat, f"{attr}Loaded", False)
                continue
            value = getattr(o, attr, None)
            if isinstance(value, omero.model.IObject):
                if value.getId() is None and id(value) not in memo:
                    raise StoreError(f"{kind_of(o)}.{field} refers to an unsaved object")
                rid = memo[id(value)][1] if id(value) in memo else value.getId().getValue()
                value = model_class(kind_of(value))(rid, False)
            setattr(flat, attr, value)
        d = o.getDetails()
        fd = omero.model.DetailsI()
        for name in ("owner", "group", "creationEvent", "updateEvent", "externalInfo"):
            ref = getattr(d, "_" + name, None)
            if isinstance(ref, omero.model.IObject) and ref.getId() is not None:
                setattr(fd, "_" + name, model_class(kind_of(ref))(ref.getId().getValue(), False))
        fd.permissions = d.permissions
        flat._details = fd
        return flat

    def _write(self, rows: list[tuple[str, int, str, bytes, Any]]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            for root, oid, kind, blob, flat in rows:
                old = self._flat.get((root, oid))
                if old is not None:
                    self._unindex(root, oid, old)
                self._rows.setdefault(root, {})[oid] = (kind, blob)
                self._flat[(root, oid)] = flat
                self._index(root, oid, flat)
                db.execute("INSERT OR REPLACE INTO objects (root, id, kind, blob) VALUES (?,?,?,?)",
                           (root, oid, kind, blob))
            for root, nxt in self._seq.items():
                db.execute("INSERT OR REPLACE INTO seq (root, next) VALUES (?, ?)", (root, nxt))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def delete(self, kind: str, oid: int) -> list[tuple[str, int]]:
        """Delete an object with what cannot live without it; returns the (root, id) pairs deleted.

        Cascades like OMERO's default delete: links to and from it, an image's pixels and
        channels, a pixels' plane infos — but never the annotations, files or containers
        on the other side of a link.
        """
        with self.lock:
            flat = self.flat(kind, oid)
            if flat is None:
                raise StoreError(f"{kind}:{oid} does not exist")
            doomed: list[tuple[str, int]] = []
            self._collect_delete(flat, doomed)
            db = self._db
            db.execute("BEGIN")
            try:
                for root, did in doomed:
                    old = self._flat.pop((root, did), None)
                    if old is not None:
                        self._unindex(root, did, old)
                    self._rows.get(root, {}).pop(did, None)
                    db.execute("DELETE FROM objects WHERE root=? AND id=?", (root, did))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return doomed

    def _collect_delete(self, flat: Any, doomed: list[tuple[str, int]]) -> None:
        kind = kind_of(flat)
        key = (root_of_kind(kind), flat.getId().getValue())
        if key in doomed:
            return
        doomed.append(key)
        for field in fields_of(type(flat)):
            if is_collection(flat, field):
                for child in self.children(kind, key[1], field):
                    # links and owned parts go; objects merely pointing back (Image.fileset) stay
                    ckind = kind_of(child)
                    if ckind.endswith("Link") or ckind in (
                            "Pixels", "Channel", "PlaneInfo", "RenderingDef", "Thumbnail",
                            "FilesetEntry", "GroupExperimenterMap", "Shape", "Roi",
                            "PixelsOriginalFileMap") or is_subkind(ckind, "Shape"):
                        self._collect_delete(child, doomed)
        if kind == "Channel":
            lc = self.resolve(flat.getLogicalChannel())
            if lc is not None:
                users = self._back.get(("Channel", "logicalChannel"), {}).get(lc.getId().getValue(), set())
                if users <= {key[1]}:
                    self._collect_delete(lc, doomed)
        # links that point at this object from elsewhere (e.g. ImageAnnotationLink.child -> annotation)
        for (root, field), targets in list(self._back.items()):
            if not root.endswith("Link") or field not in ("child", "parent"):
                continue
            for lid in list(targets.get(key[1], ())):
                lflat = self._flat_obj(root, lid)
                ref = getattr(lflat, "_" + field)
                if root_of_kind(kind_of(ref)) == key[0] and (root, lid) not in doomed:
                    doomed.append((root, lid))
