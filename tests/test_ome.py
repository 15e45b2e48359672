"""OME model builder: every metadata fact lands where the OME model says, and the XML validates."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import pytest
from ome_types import from_xml

from posdir2ometiff.metadata.model import (
    Channel,
    ExperimentMetadata,
    PlaneTime,
    StagePosition,
    TimeSettings,
    ZSectioning,
)
from posdir2ometiff.ome import (
    MAP_ANNOTATION_NS,
    ImageSpec,
    build_ome,
    channel_specs,
    default_color,
    ome_xml,
    pixel_type,
)

UUID = "urn:uuid:12345678-1234-1234-1234-123456789abc"
START = datetime(2018, 9, 28, 17, 18, 14)


def rich_meta() -> ExperimentMetadata:
    return ExperimentMetadata(
        sources=["test"],
        description="Aim: test\nStrains: Mig1-GFP",
        tags=["28-Sep-2018", "Batgirl"],
        key_values=[("Strain", "Mig1-GFP"), ("Strain", "Dot6-GFP"), ("Light path GFP", "470nm LED")],
        channels=[
            Channel("Brightfield", exposure_ms=30),
            Channel("GFP", exposure_ms=60, excitation_wavelength_nm=470, emission_wavelength_nm=525),
            Channel("mCherry", exposure_ms=100, color="#FFAA00"),
        ],
        z=ZSectioning(count=3, spacing_um=0.6),
        time=TimeSettings(interval_s=300, timepoints=2),
        positions=[
            StagePosition("pos001", 10846.5, 10208.1, 3431.425, group="1",
                          exposure_ms={"GFP": 7}, extra={"PFS offset": "19.225"}),
            StagePosition("pos002", 1.0, 2.0, 3.0),
        ],
        acquisition_start=START,
        microscope="Batgirl",
        objective="Plan Apo 60x",
        objective_magnification=60,
        objective_na=1.4,
        pixel_size_um=0.182,
        plane_times=[
            PlaneTime("pos001", 0, "GFP", START + timedelta(seconds=8)),
            PlaneTime("pos001", 1, "GFP", START + timedelta(seconds=301.5), z=2),
            PlaneTime("pos002", 1, "GFP", START + timedelta(seconds=999)),
        ],
    )


def build(meta: ExperimentMetadata | None, **kw):
    spec = ImageSpec(
        name=kw.get("name", "pos001"), size_x=64, size_y=48, size_z=3, size_t=2,
        channels=channel_specs(["Brightfield", "GFP", "mCherry"], [1, 1, 1]),
        dtype=np.dtype(kw.get("dtype", "uint16")), missing=kw.get("missing", []),
    )
    return build_ome(spec, meta, file_name="pos001.ome.tiff", uuid=UUID)


def test_full_metadata_round_trips_through_validated_xml() -> None:
    xml = ome_xml(build(rich_meta(), missing=["t=2 c=GFP z=3"]), validate=True)
    ome = from_xml(xml)  # validates again on read
    (img,) = ome.images
    px = img.pixels
    assert img.name == "pos001"
    assert (px.size_x, px.size_y, px.size_z, px.size_c, px.size_t) == (64, 48, 3, 3, 2)
    assert px.dimension_order.value == "XYZCT" and px.type.value == "uint16"
    assert px.big_endian is False
    assert px.physical_size_x == pytest.approx(0.182) and px.physical_size_z == pytest.approx(0.6)
    assert px.time_increment == 300
    assert img.acquisition_date == START
    assert img.description.startswith("Aim: test")
    # channels: names, colours (default by name, explicit wins), wavelengths
    assert [c.name for c in px.channels] == ["Brightfield", "GFP", "mCherry"]
    assert px.channels[0].color.as_hex().upper() in ("#FFF", "#FFFFFF")
    assert px.channels[1].color.as_rgb_tuple()[:3] == (0, 255, 0)
    assert px.channels[2].color.as_rgb_tuple()[:3] == (255, 170, 0)
    assert px.channels[1].excitation_wavelength == 470 and px.channels[1].emission_wavelength == 525
    # one TiffData per plane, IFD in XYZCT order
    assert len(px.tiff_data_blocks) == 18
    td = px.tiff_data_blocks[7]
    assert (td.ifd, td.first_z, td.first_c, td.first_t) == (7, 1, 2, 0)
    assert td.uuid.value == UUID and td.uuid.file_name == "pos001.ome.tiff"
    # planes: DeltaT from the log (per channel, per z), else t·interval
    planes = {(p.the_t, p.the_c, p.the_z): p for p in px.planes}
    assert len(planes) == 18
    assert planes[(0, 1, 0)].delta_t == 8.0  # GFP stack at t=0 logged at +8 s
    assert planes[(1, 1, 2)].delta_t == 301.5  # per-z log time
    assert planes[(1, 0, 0)].delta_t == 300.0  # Brightfield: no log time → interval
    # exposure: per position (positions table) beats the channel's
    assert planes[(0, 1, 0)].exposure_time == 7.0
    assert planes[(0, 0, 0)].exposure_time == 30.0
    assert planes[(0, 2, 0)].exposure_time == 100.0
    assert planes[(0, 0, 0)].exposure_time_unit.value == "ms"
    # stage position, z = stage z + z index · spacing
    assert planes[(0, 0, 2)].position_x == 10846.5
    assert planes[(0, 0, 2)].position_z == pytest.approx(3431.425 + 1.2)
    assert planes[(0, 0, 2)].position_x_unit.value == "µm"
    assert img.stage_label.name == "pos001" and img.stage_label.x == 10846.5
    # instrument
    inst = ome.instruments[0]
    assert inst.microscope.model == "Batgirl"
    assert inst.objectives[0].nominal_magnification == 60 and inst.objectives[0].lens_na == 1.4
    assert img.instrument_ref.id == inst.id and img.objective_settings.id == inst.objectives[0].id
    # annotations: one MapAnnotation (ordered, repeated keys, missing plane) + tags, all linked
    sa = ome.structured_annotations
    (kv,) = sa.map_annotations
    assert kv.namespace == MAP_ANNOTATION_NS
    pairs = [(m.k, m.value) for m in kv.value.ms]
    assert pairs == [("Strain", "Mig1-GFP"), ("Strain", "Dot6-GFP"),
                     ("Light path GFP", "470nm LED"), ("Position group", "1"),
                     ("PFS offset", "19.225"), ("missing plane", "t=2 c=GFP z=3")]
    assert [t.value for t in sa.tag_annotations] == ["28-Sep-2018", "Batgirl"]
    linked = {r.id for r in img.annotation_refs}
    assert linked == {kv.id, *(t.id for t in sa.tag_annotations)}


def test_other_position_uses_its_own_stage_and_times() -> None:
    ome = build(rich_meta(), name="pos002")
    planes = {(p.the_t, p.the_c, p.the_z): p for p in ome.images[0].pixels.planes}
    assert planes[(1, 1, 0)].delta_t == 999.0
    assert planes[(0, 1, 0)].exposure_time == 60.0  # no per-position exposure → channel's
    assert planes[(0, 0, 0)].position_y == 2.0


def test_without_metadata_still_valid_and_minimal() -> None:
    ome = build(None, dtype="float32")
    from_xml(ome_xml(ome, validate=True))
    img = ome.images[0]
    assert img.pixels.type.value == "float"
    assert not ome.instruments and img.stage_label is None and not img.annotation_refs
    assert img.pixels.planes[0].delta_t is None and img.pixels.physical_size_x is None


def test_default_colours_by_name() -> None:
    assert default_color("GFP") == "#00FF00" and default_color("YFP") == "#00FF00"
    assert default_color("FITC") == "#00FF00"
    for red in ("mCherry", "RFP", "TxRed", "tdTomato"):
        assert default_color(red) == "#FF0000"
    assert default_color("Cy5") == "#FF00FF"
    assert default_color("DAPI") == "#0000FF" and default_color("BFP") == "#0000FF"
    for grey in ("Brightfield", "DIC", "phase", "BF"):
        assert default_color(grey) == "#FFFFFF"
    assert default_color("mystery") is None


def test_rgb_sources_become_three_coloured_channels() -> None:
    specs = channel_specs(["GFP", "photo"], [1, 3])
    assert [s.name for s in specs] == ["GFP", "photo-R", "photo-G", "photo-B"]
    assert [s.source for s in specs] == ["GFP", "photo", "photo", "photo"]
    assert specs[1].color == "#FF0000"


def test_pixel_types() -> None:
    assert pixel_type("uint8") == "uint8" and pixel_type(np.float32) == "float"
    with pytest.raises(ValueError, match="complex"):
        pixel_type("complex64")


def _planes(ome) -> dict:
    return {(p.the_t, p.the_c, p.the_z): p for p in ome.images[0].pixels.planes}


def test_position_z_from_the_logged_drive_and_the_stack_geometry() -> None:
    """Issue 10, point 5: PositionZ where the stage was (drive logged before the stack, centred
    stack), else the points table with the same geometry."""
    meta = rich_meta()
    meta.z = ZSectioning(count=3, spacing_um=0.6, method="1", first_slice_steps=-1.0)
    meta.plane_times.append(PlaneTime("pos001", 1, "Brightfield", START, drive_z_um=3430.0))
    planes = _planes(build(meta))
    assert [planes[(1, 0, z)].position_z for z in range(3)] == pytest.approx(
        [3429.4, 3430.0, 3430.6]
    )
    # No drive logged for t=0: the points table's Z is the centre.
    assert [planes[(0, 0, z)].position_z for z in range(3)] == pytest.approx(
        [3430.825, 3431.425, 3432.025]
    )


def test_plane_times_are_found_by_the_software_timepoint_number() -> None:
    """A file set that starts at timepoint 2 (TheT 0 = "Time point_2") takes that block's times."""
    spec = ImageSpec(
        name="pos002", size_x=8, size_y=8, size_z=1, size_t=1,
        channels=channel_specs(["GFP"], [1]), dtype=np.dtype("uint8"), t_numbers=[2],
    )
    ome = build_ome(spec, rich_meta(), file_name="p.ome.tiff", uuid=UUID)
    assert ome.images[0].pixels.planes[0].delta_t == 999.0


def test_camera_settings_in_detector_settings() -> None:
    """Issue 10, point 6: EM gain, camera mode and binning in the channel's DetectorSettings."""
    meta = rich_meta()
    meta.channels[0].camera_mode, meta.channels[0].gain = "2", 270  # CCD port: no EM gain
    meta.channels[1].camera_mode, meta.channels[1].gain = "3", 270
    meta.channels[1].binning = "2x2"
    meta.channels[2].binning = "3x3"
    ome = from_xml(ome_xml(build(meta), validate=True))
    chans = ome.images[0].pixels.channels
    detectors = {d.id: d for d in ome.instruments[0].detectors}
    bf, gfp, mch = (c.detector_settings for c in chans)
    assert detectors[bf.id].type.value == "CCD" and bf.gain is None
    assert detectors[gfp.id].type.value == "EMCCD" and gfp.gain == 270
    assert gfp.binning.value == "2x2" and mch.binning.value == "Other"
    assert detectors[gfp.id].model == "camera in EM_Constant mode"
    assert len(detectors) == 3  # CCD, EM_Constant, and mCherry's unknown mode


def test_not_captured_planes_listed_with_their_reason() -> None:
    spec = ImageSpec(
        name="pos001", size_x=8, size_y=8, size_z=1, size_t=1,
        channels=channel_specs(["GFP"], [1]), dtype=np.dtype("uint8"),
        not_captured=[("t=1 c=GFP z=1", "stage time-out")],
    )
    ome = build_ome(spec, None, file_name="p.ome.tiff", uuid=UUID)
    pairs = [(m.k, m.value) for m in ome.structured_annotations.map_annotations[0].value.ms]
    assert pairs == [("not captured plane", "t=1 c=GFP z=1: stage time-out")]
