"""An OME-TIFF as the push sees it: its SHA-1 and the OME Images inside it, with their annotations.

Used for every file pushed: an OME-TIFF from anywhere is read here (:func:`item_from_file`), and a
converter output folder's files through :mod:`omero_push.manifest`. Nothing here touches the
network: ``--dry-run`` is built from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tifffile

from omero_push.errors import InputError
from posdir2ometiff.manifest import sha1_file

log = logging.getLogger(__name__)

KV_NAMESPACE = "openmicroscopy.org/omero/client/mapAnnotation"
OME_TIFF_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.tf2", ".ome.tf8", ".ome.btf")


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


def item_from_file(path: Path) -> PushItem:
    """A push item for an OME-TIFF from anywhere: hashed here, annotations from its OME-XML."""
    path = path.resolve()
    images = images_from_ome(read_ome(path))
    if not images:
        raise InputError(f"{path}: OME-XML lists no Image")
    return PushItem(path=path, sha1=sha1_file(path), size=path.stat().st_size, images=images)


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
