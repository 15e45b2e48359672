"""Helpers for the omero_push tests: small OME-TIFFs with the annotations our converter writes.

Made here (not by the converter) so the pusher's tests pin down what it reads from *any* OME-TIFF:
Image name and description, channel names and colours, a MapAnnotation in the OMERO client
namespace, TagAnnotations and a CommentAnnotation linked from the Image.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile
from ome_types import model as m
from ome_types import to_xml

KV_NS = "openmicroscopy.org/omero/client/mapAnnotation"


def make_ome_tiff(
    path: Path,
    *,
    name: str = "pos001",
    shape_tczyx: tuple[int, int, int, int, int] = (2, 2, 3, 40, 50),
    dtype: str = "uint16",
    seed: int = 0,
    kv: list[tuple[str, str]] | None = None,
    tags: list[str] | None = None,
    comment: str | None = "imaged after 2 h in glucose",
    channel_names: list[str] | None = None,
    tile: tuple[int, int] | None = (16, 16),
    compression: str | None = None,
) -> np.ndarray:
    """Write an OME-TIFF (DimensionOrder XYZCT) and return its pixels as a (T, C, Z, Y, X) array."""
    t, c, z, y, x = shape_tczyx
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "f":
        data = rng.random(shape_tczyx, dtype=np.float32).astype(dtype)
    else:
        data = rng.integers(0, np.iinfo(dtype).max, size=shape_tczyx, dtype=dtype)
    names = channel_names or ["Brightfield", "GFP", "mCherry", "Cy5"][:c]
    colours = [0xFFFFFFFF, 0x00FF00FF, 0xFF0000FF, 0xFF00FFFF]
    kv = (
        kv
        if kv is not None
        else [("strain", "BY4741"), ("aim", "test push"), ("strain", "Hxt4-GFP")]
    )
    tags = tags if tags is not None else ["pushtest", "glucose"]
    refs = []
    anns = m.StructuredAnnotations()
    anns.map_annotations.append(
        m.MapAnnotation(
            id="Annotation:0",
            namespace=KV_NS,
            value=m.Map(ms=[m.Map.M(k=k, value=v) for k, v in kv]),
        )
    )
    refs.append(m.AnnotationRef(id="Annotation:0"))
    for i, tag in enumerate(tags, start=1):
        anns.tag_annotations.append(m.TagAnnotation(id=f"Annotation:{i}", value=tag))
        refs.append(m.AnnotationRef(id=f"Annotation:{i}"))
    if comment:
        cid = f"Annotation:{len(tags) + 1}"
        anns.comment_annotations.append(m.CommentAnnotation(id=cid, value=comment))
        refs.append(m.AnnotationRef(id=cid))
    pixels = m.Pixels(
        id="Pixels:0",
        dimension_order="XYZCT",
        type=str(np.dtype(dtype)) if np.dtype(dtype).kind != "f" else "float",
        size_x=x,
        size_y=y,
        size_z=z,
        size_c=c,
        size_t=t,
        physical_size_x=0.5,
        physical_size_y=0.5,
        physical_size_z=0.6,
        channels=[
            m.Channel(
                id=f"Channel:0:{i}",
                name=names[i],
                color=m.Color(colours[i % 4]),
                samples_per_pixel=1,
            )
            for i in range(c)
        ],
        tiff_data_blocks=[m.TiffData(ifd=0, plane_count=t * c * z)],
    )
    ome = m.OME(
        images=[
            m.Image(
                id="Image:0",
                name=name,
                description=f"{name} of a test experiment",
                pixels=pixels,
                annotation_refs=refs,
            )
        ],
        structured_annotations=anns,
    )
    xml = to_xml(ome)
    planes = data.reshape(-1, y, x)  # XYZCT: z fastest, then c, then t
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tw:
        for i, plane in enumerate(planes):
            tw.write(
                plane,
                photometric="minisblack",
                tile=tile,
                compression=compression,
                description=xml if i == 0 else None,
                metadata=None,
                contiguous=False,
            )
    return data


def make_converter_output(folder: Path, positions: int = 2, **kw: object) -> dict[str, np.ndarray]:
    """A folder shaped like posdir2ometiff output: OME-TIFFs, manifest.json, experiment.h5."""
    import hashlib

    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, np.ndarray] = {}
    entries = {}
    for i in range(positions):
        name = f"pos{i + 1:03d}"
        out = folder / f"{name}.ome.tiff"
        data[name] = make_ome_tiff(out, name=name, seed=i, **kw)  # type: ignore[arg-type]
        t, c, z, y, x = data[name].shape
        entries[name] = {
            "output": out.name,
            "sha1": hashlib.sha1(out.read_bytes()).hexdigest(),
            "size": out.stat().st_size,
            "dimensions": {"X": x, "Y": y, "Z": z, "C": c, "T": t},
            "dtype": str(data[name].dtype),
            "status": "ok",
            "sources": [f"{name}/img_{k:06d}.png" for k in range(t * c * z)],
            "missing_planes": [],
        }
    h5 = folder / "experiment.h5"
    frames = {
        "channels": pd.DataFrame(
            {
                "channel": ["Brightfield", "GFP"],
                "exposure_ms": pd.Series([30, 7], dtype="int64"),
                "gain": [1.5, 2.25],
                "skip": [False, True],
            }
        ),
        "positions": pd.DataFrame(
            {
                "name": ["pos001", "pos002"],
                "x": [10846.5, 1200.0],
                "y": [-77.25, 3.5],
                "group": [1, 2],
            }
        ),
    }
    with pd.HDFStore(h5, mode="w") as store:
        for key, df in frames.items():
            store.put(key, df, format="table", track_times=False)
    manifest = {
        "tool": "posdir2ometiff",
        "version": "0.1.0",
        "created": "2026-11-21T05:00:00+00:00",
        "options": {"tile": 512, "compression": "zlib"},
        "source": "/data/experiment",
        "metadata": {
            "parsers": ["swainlab"],
            "description": "Aim: test the push\nStrains: BY4741",
            "tags": ["exp-tag", "glucose"],
            "key_values": [["Strain", "BY4741"], ["Strain", "Hxt4-GFP"], ["Z spacing (µm)", "0.6"]],
            "omero_project": "PushTests",
            "omero_dataset": "exp1",
        },
        "tables": {
            "path": h5.name,
            "sha1": hashlib.sha1(h5.read_bytes()).hexdigest(),
            "names": list(frames),
        },
        "positions": entries,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return data


def test_make_ome_tiff_reads_back(tmp_path: Path) -> None:
    """The helper's files are what tifffile/ome-types see: right planes, annotations linked."""
    from omero_push.ometiff import images_from_ome, read_ome

    data = make_ome_tiff(tmp_path / "a.ome.tiff")
    with tifffile.TiffFile(tmp_path / "a.ome.tiff") as tif:
        arr = tif.series[0].asarray()
    assert np.array_equal(arr.reshape(data.shape), data)
    (im,) = images_from_ome(read_ome(tmp_path / "a.ome.tiff"))
    assert im.tags == ("pushtest", "glucose")


def isolate_root_logging() -> Iterator[None]:
    """Generator for an autouse fixture: a clean root logger for each omero_push test.

    Another CLI run earlier in the same pytest process may have left a root handler bound to a
    capture stream that is closed now (and a raised root level): drop such handlers, use
    WARNING, and put everything back afterwards.
    """
    import logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level

    def alive(h: logging.Handler) -> bool:
        stream = getattr(h, "stream", None)
        return not (stream is not None and getattr(stream, "closed", False))

    root.handlers[:] = [h for h in root.handlers if alive(h)]
    root.setLevel(logging.WARNING)
    try:
        yield
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
