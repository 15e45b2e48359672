"""OME model builder: one position's planes plus the experiment metadata → an ``ome_types.OME``.

We build the OME-XML with ome-types rather than tifffile's metadata dict because the dict has no
place for StageLabel, Instrument, tags or key-value pairs, and because a typed model validated
against the 2016-06 schema is what OMERO (through Bio-Formats) will read back. The builder is a
pure function: the same inputs give the same model, and it never touches pixels, so the XML is
built once per file and written as the first IFD's ImageDescription.

Conventions (documented because readers must know them):

* DimensionOrder is XYZCT and the TIFF holds one IFD per plane in that order
  (IFD = z + Z·(c + C·t)); one TiffData block per plane names its IFD and the file's UUID.
* DeltaT: acquisition time from the log (``meta.plane_times``) relative to ``acquisition_start``;
  otherwise ``t · interval``. ExposureTime: the position's own exposure for the channel (positions
  table) or else the channel's. PositionX/Y: the stage position. PositionZ: where the stage
  was: the focus drive position the log recorded before that channel's stack
  (``PlaneTime.drive_z_um``), else the positions table's Z; plus
  ``(first_slice_steps + z index) · z spacing``, the stack geometry the parser read from the
  sectioning method (centred on the position, or starting there; see
  ``metadata/swainlab/acq.py:first_slice_steps``).
* Camera: a channel's EM gain and binning go into its DetectorSettings, referring to a Detector
  of the Instrument per camera mode (EMCCD for the EM modes, CCD for the normal port); the EM
  gain only where the camera mode is an EM mode (or unknown), since the normal port ignores it.
* Missing planes (written as zeros) are listed as ``missing plane`` key-value pairs, and planes
  the log says were not captured as ``not captured plane`` pairs with the log's reason, so anyone
  viewing the image in OMERO sees which planes are not real data, and why.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from ome_types import OME, validate_xml
from ome_types.model import (
    AnnotationRef,
    Channel,
    Detector,
    DetectorSettings,
    Image,
    Instrument,
    InstrumentRef,
    Map,
    MapAnnotation,
    Microscope,
    Objective,
    ObjectiveSettings,
    Pixels,
    Plane,
    StageLabel,
    StructuredAnnotations,
    TagAnnotation,
    TiffData,
    UnitsLength,
    UnitsTime,
)

from posdir2ometiff import __version__
from posdir2ometiff.metadata.model import Channel as MetaChannel
from posdir2ometiff.metadata.model import ExperimentMetadata
from posdir2ometiff.omexml import render, render_streamed

logger = logging.getLogger(__name__)

#: Namespace OMERO.web shows (and lets users edit) as "key-value pairs".
MAP_ANNOTATION_NS = "openmicroscopy.org/omero/client/mapAnnotation"

_PIXEL_TYPES = {
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "float32": "float",
    "float64": "double",
    "bool": "bit",
}

# Default display colours by channel name; first matching rule wins (order matters: "bfp" must
# be tested before the brightfield abbreviation, "cy5" before red dyes).
_COLOUR_RULES: list[tuple[tuple[str, ...], str]] = [
    (("dapi", "bfp", "hoechst", "blue"), "#0000FF"),
    (("cy5", "far-red", "farred", "alexa647", "af647"), "#FF00FF"),
    (("mcherry", "rfp", "txred", "texasred", "tdtomato", "mkate", "cy3", "red"), "#FF0000"),
    (("gfp", "yfp", "fitc", "venus", "citrine", "mneon", "green"), "#00FF00"),
    (("brightfield", "bright", "dic", "phase", "trans"), "#FFFFFF"),
]
_EXACT_COLOURS = {"bf": "#FFFFFF", "pc": "#FFFFFF", "r": "#FF0000", "g": "#00FF00", "b": "#0000FF"}


def default_color(name: str) -> str | None:
    """Display colour a biologist expects for a channel called ``name``, or None if unknown."""
    low = name.lower().strip()
    if low in _EXACT_COLOURS:
        return _EXACT_COLOURS[low]
    for keys, colour in _COLOUR_RULES:
        if any(k in low for k in keys):
            return colour
    return None


def pixel_type(dtype: np.dtype | str) -> str:
    """OME PixelType for a numpy dtype; raise ValueError for types OME cannot hold."""
    name = np.dtype(dtype).name
    try:
        return _PIXEL_TYPES[name]
    except KeyError:
        raise ValueError(f"pixel type {name} has no OME equivalent") from None


@dataclass
class ChannelSpec:
    """One output channel: its OME name, the metadata channel it comes from, a fixed colour."""

    name: str
    #: Name of the channel in the metadata (for RGB sources: the file's channel, not "GFP-R").
    source: str
    #: Explicit colour (e.g. red for the R component of an RGB source); None → metadata/default.
    color: str | None = None


@dataclass
class ImageSpec:
    """What the builder needs to know about one position's output file (no pixels)."""

    name: str
    size_x: int
    size_y: int
    size_z: int
    size_t: int
    channels: list[ChannelSpec]
    dtype: np.dtype
    #: Labels of planes written as zeros, e.g. "t=3 c=GFP z=2".
    missing: list[str] = field(default_factory=list)
    #: Planes written as zeros that the log says were not captured: (label, reason).
    not_captured: list[tuple[str, str]] = field(default_factory=list)
    #: The software's timepoint number of each TheT (as in the file names and the log's
    #: "Time point_N" blocks); empty → TheT + 1. Plane times are looked up by it.
    t_numbers: list[int] = field(default_factory=list)

    @property
    def size_c(self) -> int:
        return len(self.channels)


def describe_experiment(meta: ExperimentMetadata) -> str | None:
    """Image description: the parser's own text, else composed from aim, strains, authors, comments."""
    if meta.description:
        return meta.description
    parts = []
    if meta.aim:
        parts.append(f"Aim: {meta.aim}")
    if meta.strains:
        parts.append("Strains: " + ", ".join(meta.strains))
    if meta.authors:
        parts.append("Authors: " + ", ".join(meta.authors))
    if meta.comments:
        parts.append(f"Comments: {meta.comments}")
    return "\n".join(parts) or None


def _seconds(delta) -> float:
    return round(delta.total_seconds(), 6)


def _xml_text(text: str) -> str:
    """``text`` without lone surrogates (``os.fsdecode``'s escapes of non-UTF-8 bytes)."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def build_ome(
    spec: ImageSpec,
    meta: ExperimentMetadata | None = None,
    *,
    file_name: str,
    uuid: str,
) -> OME:
    """Build the OME model of one position file.

    ``file_name`` and ``uuid`` go into every TiffData block so readers can tell which file holds
    the planes (and a renamed copy still matches by UUID). ``meta`` may be None (no metadata files
    found): the result then has only what the pixels themselves tell.
    """
    ome, elements = _build(spec, meta, file_name=file_name, uuid=uuid)
    planes: list[Plane] = []
    tiff_data: list[TiffData] = []
    for plane, td in elements:
        planes.append(plane)
        tiff_data.append(td)
    # The per-plane lists join after OME's construction: it walks every object to link IDs and
    # references (ome-types' _link_refs), 60 % of building a 3,000-plane model, and Plane and
    # TiffData carry neither. Assignment still validates them (validate_assignment).
    pixels = ome.images[0].pixels
    pixels.tiff_data_blocks = tiff_data
    pixels.planes = planes
    return ome


def position_ome_xml(
    spec: ImageSpec,
    meta: ExperimentMetadata | None = None,
    *,
    file_name: str,
    uuid: str,
) -> str:
    """``ome_xml(build_ome(...))``, the same text, without holding every Plane and TiffData.

    A position's model is mostly one Plane and one TiffData (with its UUID) per plane, about
    3 kB of objects per plane: 10 MB at 3,000 planes, alive at once only to be rendered, whose
    freed memory the process kept (peak RSS grew with T). Here each plane's pair is made,
    rendered to its two lines and dropped (omexml.render_streamed)."""
    ome, elements = _build(spec, meta, file_name=file_name, uuid=uuid)
    return render_streamed(
        ome, elements, lambda: build_ome(spec, meta, file_name=file_name, uuid=uuid))


def _build(
    spec: ImageSpec,
    meta: ExperimentMetadata | None,
    *,
    file_name: str,
    uuid: str,
) -> tuple[OME, Iterator[tuple[Plane, TiffData]]]:
    """The model without its per-plane lists, and those lists' (Plane, TiffData) pairs in IFD
    order, made as they are iterated."""
    meta = meta or ExperimentMetadata()
    position = meta.position(spec.name)
    # A folder name that is not UTF-8 (kept byte-exact on disk and in the manifest) cannot go
    # into XML; there it is shown with U+FFFD for the undecodable bytes.
    spec = dataclasses.replace(spec, name=_xml_text(spec.name))
    file_name = _xml_text(file_name)
    spacing = meta.z.spacing_um if meta.z else None
    interval = meta.time.interval_s if meta.time else None

    # --- plane times from the log, keyed by (t, channel, z or None) --------------------------
    times: dict[tuple[int, str, int | None], datetime] = {}
    drive_z: dict[tuple[int, str], float] = {}
    low_name = spec.name.lower()
    for pt in meta.plane_times:
        if pt.position.lower() == low_name:
            times.setdefault((pt.t, pt.channel.lower(), pt.z), pt.time)
            if pt.drive_z_um is not None:
                drive_z.setdefault((pt.t, pt.channel.lower()), pt.drive_z_um)
    first_slice = (meta.z.first_slice_steps if meta.z else None) or 0.0
    start = meta.acquisition_start
    if times and start is None:
        start = min(times.values())

    # --- channels ------------------------------------------------------------------------------
    detectors = _Detectors()
    channels: list[Channel] = []
    exposures: list[float | None] = []
    for i, ch in enumerate(spec.channels):
        mch = meta.channel(ch.source)
        colour = ch.color or (mch.color if mch else None) or default_color(ch.source)
        kw: dict = {}
        if mch is not None:
            if mch.excitation_wavelength_nm:
                kw["excitation_wavelength"] = mch.excitation_wavelength_nm
                kw["excitation_wavelength_unit"] = UnitsLength.NANOMETER
            if mch.emission_wavelength_nm:
                kw["emission_wavelength"] = mch.emission_wavelength_nm
                kw["emission_wavelength_unit"] = UnitsLength.NANOMETER
        if colour:
            kw["color"] = colour
        if mch is not None and (settings := detectors.settings(mch)) is not None:
            kw["detector_settings"] = settings
        channels.append(Channel(id=f"Channel:0:{i}", name=ch.name, samples_per_pixel=1, **kw))
        exposure = None
        if position is not None:
            exposure = next(
                (v for k, v in position.exposure_ms.items() if k.lower() == ch.source.lower()),
                None,
            )
        if exposure is None and mch is not None:
            exposure = mch.exposure_ms
        exposures.append(exposure)

    # --- planes and TiffData, in XYZCT order (made as the caller iterates) --------------------
    stage_x = position.x_um if position else None
    stage_y = position.y_um if position else None
    stage_z = position.z_um if position else None

    def elements() -> Iterator[tuple[Plane, TiffData]]:
        ifd = 0
        for t in range(spec.size_t):
            log_t = (spec.t_numbers[t] if spec.t_numbers else t + 1) - 1  # PlaneTime.t of TheT
            for c, ch in enumerate(spec.channels):
                src = ch.source.lower()
                stack_z = drive_z.get((log_t, src), stage_z)
                for z in range(spec.size_z):
                    kw = {}
                    when = times.get((log_t, src, z)) or times.get((log_t, src, None))
                    if when is not None and start is not None:
                        kw["delta_t"] = _seconds(when - start)
                    elif interval is not None:
                        kw["delta_t"] = round(t * interval, 6)
                    if "delta_t" in kw:
                        kw["delta_t_unit"] = UnitsTime.SECOND
                    if exposures[c] is not None:
                        kw["exposure_time"] = exposures[c]
                        kw["exposure_time_unit"] = UnitsTime.MILLISECOND
                    if stage_x is not None:
                        kw["position_x"] = stage_x
                        kw["position_x_unit"] = UnitsLength.MICROMETER
                    if stage_y is not None:
                        kw["position_y"] = stage_y
                        kw["position_y_unit"] = UnitsLength.MICROMETER
                    if stack_z is not None:
                        kw["position_z"] = round(stack_z + (first_slice + z) * (spacing or 0.0), 6)
                        kw["position_z_unit"] = UnitsLength.MICROMETER
                    yield (Plane(the_z=z, the_c=c, the_t=t, **kw),
                           TiffData(ifd=ifd, first_z=z, first_c=c, first_t=t, plane_count=1,
                                    uuid=TiffData.UUID(value=uuid, file_name=file_name)))
                    ifd += 1

    pixels_kw: dict = {}
    if meta.pixel_size_um:
        pixels_kw.update(
            physical_size_x=meta.pixel_size_um,
            physical_size_x_unit=UnitsLength.MICROMETER,
            physical_size_y=meta.pixel_size_um,
            physical_size_y_unit=UnitsLength.MICROMETER,
        )
    if spacing and spec.size_z > 1:
        pixels_kw.update(physical_size_z=spacing, physical_size_z_unit=UnitsLength.MICROMETER)
    if interval:
        pixels_kw.update(time_increment=interval, time_increment_unit=UnitsTime.SECOND)
    pixels = Pixels(
        id="Pixels:0",
        dimension_order="XYZCT",
        type=pixel_type(spec.dtype),
        size_x=spec.size_x,
        size_y=spec.size_y,
        size_z=spec.size_z,
        size_c=spec.size_c,
        size_t=spec.size_t,
        big_endian=False,
        interleaved=False,
        channels=channels,
        tiff_data_blocks=[],  # given below, once the OME object exists
        planes=[],
        **pixels_kw,
    )

    # --- instrument --------------------------------------------------------------------------
    image_kw: dict = {}
    instruments: list[Instrument] = []
    has_objective = meta.objective or meta.objective_magnification or meta.objective_na
    if meta.microscope or has_objective or detectors.detectors:
        inst = Instrument(id="Instrument:0", detectors=detectors.detectors)
        if meta.microscope:
            inst.microscope = Microscope(model=meta.microscope)
        if has_objective:
            obj_kw: dict = {}
            if meta.objective:
                obj_kw["model"] = meta.objective
            if meta.objective_magnification:
                obj_kw["nominal_magnification"] = meta.objective_magnification
            if meta.objective_na:
                obj_kw["lens_na"] = meta.objective_na
            inst.objectives = [Objective(id="Objective:0:0", **obj_kw)]
            image_kw["objective_settings"] = ObjectiveSettings(id="Objective:0:0")
        instruments.append(inst)
        image_kw["instrument_ref"] = InstrumentRef(id=inst.id)

    if position is not None and (stage_x is not None or stage_y is not None or stage_z is not None):
        label_kw: dict = {}
        for axis, value in (("x", stage_x), ("y", stage_y), ("z", stage_z)):
            if value is not None:
                label_kw[axis] = value
                label_kw[f"{axis}_unit"] = UnitsLength.MICROMETER
        image_kw["stage_label"] = StageLabel(name=position.name, **label_kw)
    if meta.acquisition_start:
        image_kw["acquisition_date"] = meta.acquisition_start
    description = describe_experiment(meta)
    if description:
        image_kw["description"] = description

    # --- annotations -------------------------------------------------------------------------
    pairs = [(str(k), str(v)) for k, v in meta.key_values]
    if position is not None:
        # Per-image facts from the positions table (e.g. group, PFS offset): users filter by them.
        if position.group is not None:
            pairs.append(("Position group", str(position.group)))
        pairs += [(str(k), str(v)) for k, v in position.extra.items()]
    pairs += [("missing plane", label) for label in spec.missing]
    pairs += [("not captured plane", f"{label}: {reason}") for label, reason in spec.not_captured]
    annotations = StructuredAnnotations()
    refs: list[AnnotationRef] = []
    if pairs:
        ann = MapAnnotation(
            id="Annotation:0",
            namespace=MAP_ANNOTATION_NS,
            value=Map(ms=[Map.M(k=k, value=v) for k, v in pairs]),
        )
        annotations.map_annotations.append(ann)
        refs.append(AnnotationRef(id=ann.id))
    for i, tag in enumerate(dict.fromkeys(meta.tags), start=1):
        ann = TagAnnotation(id=f"Annotation:{i}", value=tag)
        annotations.tag_annotations.append(ann)
        refs.append(AnnotationRef(id=ann.id))

    image = Image(id="Image:0", name=spec.name, pixels=pixels, annotation_refs=refs, **image_kw)
    ome = OME(
        images=[image],
        instruments=instruments,
        structured_annotations=annotations,
        uuid=uuid,
        creator=f"posdir2ometiff {__version__}",
    )
    return ome, elements()


#: The Acq file's camera modes (pswain/Acquisition multiDGUI2.m: "1 if EM with gain+exposure
#: correction, 2 if CCD, 3 if EM with constant gain and exposure") → name and OME Detector type.
CAMERA_MODES = {"1": ("EM_Smart", "EMCCD"), "2": ("CCD", "CCD"), "3": ("EM_Constant", "EMCCD")}
_OME_BINNINGS = {"1x1", "2x2", "4x4", "8x8"}


class _Detectors:
    """One Detector per camera mode met, and each channel's DetectorSettings referring to it."""

    def __init__(self) -> None:
        self.detectors: list[Detector] = []
        self._ids: dict[str, str] = {}

    def settings(self, ch: MetaChannel) -> DetectorSettings | None:
        """DetectorSettings for a metadata channel with camera facts, else None."""
        if ch.camera_mode is None and ch.gain is None and ch.binning is None:
            return None
        mode = (ch.camera_mode or "").strip()
        name, det_type = CAMERA_MODES.get(mode, (mode or None, None))
        key = mode or "camera"
        if key not in self._ids:
            det_id = f"Detector:0:{len(self._ids)}"
            self._ids[key] = det_id
            det_kw: dict = {"id": det_id}
            if det_type:
                det_kw["type"] = det_type
            if name:
                det_kw["model"] = f"camera in {name} mode"
            self.detectors.append(Detector(**det_kw))
        kw: dict = {"id": self._ids[key]}
        if ch.gain is not None and det_type != "CCD":
            kw["gain"] = ch.gain
        if ch.binning:
            kw["binning"] = ch.binning if ch.binning in _OME_BINNINGS else "Other"
        return DetectorSettings(**kw)


def ome_xml(ome: OME, *, validate: bool = False) -> str:
    """Serialise ``ome`` to OME-XML (optionally validating it against the 2016-06 schema).

    The text is ome-types' own; its per-plane elements are rendered in one pass (omexml.py)."""
    xml = render(ome)
    if validate:
        validate_xml(xml)
    return xml


def channel_specs(names: Sequence[str], samples: Sequence[int]) -> list[ChannelSpec]:
    """Output channels for source channels with ``samples`` components each.

    Our RGB choice: an RGB(A) source channel becomes separate grey channels named
    ``<name>-R``, ``<name>-G``, ``<name>-B`` (``-A``) coloured red, green, blue (white), because
    OMERO, Fiji and QuPath render, pyramid and measure one-sample channels everywhere, while
    interleaved RGB (SamplesPerPixel 3) cannot be combined with other channels in one hypercube.
    """
    out: list[ChannelSpec] = []
    suffixes = ("R", "G", "B", "A")
    colours = ("#FF0000", "#00FF00", "#0000FF", "#FFFFFF")
    for name, n in zip(names, samples, strict=True):
        if n == 1:
            out.append(ChannelSpec(name=name, source=name))
        else:
            out += [
                ChannelSpec(name=f"{name}-{suffixes[s]}", source=name, color=colours[s])
                for s in range(n)
            ]
    return out
