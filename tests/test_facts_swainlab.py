"""Acceptance test (issue 3): every fact of the shared sample, its value, and where it lands.

Each row is one fact read from ``microscope1_Acq.txt`` / ``microscope1_log.txt``: its expected value,
how to get it from the parsed model, and where it must appear in the OME-XML of the converted
``pos001.ome.tiff`` (an XPath into the OME document, default namespace OME 2016-06; ``/@Attr`` for an
attribute, ``/text()`` for text). A scalar expectation must hold for every node the path selects
(e.g. every plane of pos001 carries the stage X); a list expectation is the exact list of values.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tifffile

from posdir2ometiff.convert import convert
from posdir2ometiff.metadata.model import ExperimentMetadata
from posdir2ometiff.metadata.swainlab import SwainLabParser

NS = {"": "http://www.openmicroscopy.org/Schemas/OME/2016-06"}
MAP_NS = "openmicroscopy.org/omero/client/mapAnnotation"
KV = f"StructuredAnnotations/MapAnnotation[@Namespace='{MAP_NS}']/Value/M"
PLANE = "Image/Pixels/Plane"
#: "captureStack (Batgirl). Z drive position before stack capture is: 3429.6501." (t3, pos001, GFP)
_DRIVE_T2_GFP = 3429.6501


@dataclass(frozen=True)
class Contains:
    """The value contains this text (the description is assembled from several header fields)."""

    text: str


@dataclass(frozen=True)
class Fact:
    fact: str
    expected: Any
    #: How the parser exposes it; None when the value is the OME builder's (e.g. default colour).
    model: Callable[[ExperimentMetadata], Any] | None
    xpath: str

    def __str__(self) -> str:  # the test id
        return self.fact


def _delta_t(meta: ExperimentMetadata, t: int, channel: str) -> float:
    pt = next(p for p in meta.plane_times if (p.position, p.t, p.channel) == ("pos001", t, channel))
    return (pt.time - meta.acquisition_start).total_seconds()


def _drive_z(meta: ExperimentMetadata, t: int, channel: str) -> float:
    pt = next(p for p in meta.plane_times if (p.position, p.t, p.channel) == ("pos001", t, channel))
    assert pt.drive_z_um is not None
    return round(pt.drive_z_um, 6)


def _kv(meta: ExperimentMetadata, key: str) -> list[str]:
    return [v for k, v in meta.key_values if k == key]


FACTS = [
    # --- channels (Acq "Channels:" table, never a list of names in code)
    Fact(
        "channel names, in Acq order",
        ["Brightfield", "DIC", "GFP"],
        lambda m: [c.name for c in m.channels],
        "Image/Pixels/Channel/@Name",
    ),
    Fact(
        "DIC channel present (dropped by the tool we replace)",
        "DIC",
        lambda m: m.channel("DIC").name,
        "Image/Pixels/Channel[@Name='DIC']/@Name",
    ),
    Fact(
        "GFP excitation 470 nm (light path '470nm LED')",
        470.0,
        lambda m: m.channel("GFP").excitation_wavelength_nm,
        "Image/Pixels/Channel[@Name='GFP']/@ExcitationWavelength",
    ),
    Fact(
        "GFP emission 535 nm (light path '535/50 emission filter')",
        535.0,
        lambda m: m.channel("GFP").emission_wavelength_nm,
        "Image/Pixels/Channel[@Name='GFP']/@EmissionWavelength",
    ),
    Fact(
        "GFP colour green by default (RGBA 0x00FF00FF)",
        0x00FF00FF,
        None,
        "Image/Pixels/Channel[@Name='GFP']/@Color",
    ),
    # --- z and time settings
    Fact(
        "z step 0.6 µm (Z_sectioning Spacing)",
        0.6,
        lambda m: m.z.spacing_um,
        "Image/Pixels/@PhysicalSizeZ",
    ),
    Fact("5 z-sections (Z_sectioning Sections)", 5, lambda m: m.z.count, "Image/Pixels/@SizeZ"),
    Fact(
        "interval 300 s (Time_settings column 2)",
        300.0,
        lambda m: m.time.interval_s,
        "Image/Pixels/@TimeIncrement",
    ),
    # --- pos001 from the Points table
    Fact(
        "pos001 stage X 10846.5 µm",
        10846.5,
        lambda m: m.position("pos001").x_um,
        f"{PLANE}/@PositionX",
    ),
    Fact(
        "pos001 stage Y 10208.1 µm",
        10208.1,
        lambda m: m.position("pos001").y_um,
        f"{PLANE}/@PositionY",
    ),
    Fact(
        "pos001 stage Z 3431.425 µm (Points table)",
        3431.425,
        lambda m: m.position("pos001").z_um,
        "Image/StageLabel[@Name='pos001']/@Z",
    ),
    Fact(
        "t0 Brightfield first section at 3429.2501 µm: Z drive 3430.4501 logged before the "
        "stack, centred (method 2: 5 sections, 2 steps of 0.6 µm below)",
        3429.2501,
        lambda m: _drive_z(m, 0, "Brightfield") - 2 * 0.6,
        f"{PLANE}[@TheT='0'][@TheC='0'][@TheZ='0']/@PositionZ",
    ),
    Fact(
        "t2 GFP last section 1.2 µm above the Z drive logged before its stack",
        round(_DRIVE_T2_GFP + 1.2, 6),
        lambda m: _drive_z(m, 2, "GFP") + 2 * 0.6,
        f"{PLANE}[@TheT='2'][@TheC='2'][@TheZ='4']/@PositionZ",
    ),
    Fact(
        "pos001 stage label",
        10846.5,
        lambda m: m.position("pos001").x_um,
        "Image/StageLabel[@Name='pos001']/@X",
    ),
    Fact(
        "GFP exposure at pos001 7 ms (Points table, not the channel's 60 ms)",
        7.0,
        lambda m: m.position("pos001").exposure_ms["GFP"],
        f"{PLANE}[@TheC='2']/@ExposureTime",
    ),
    Fact(
        "Brightfield exposure at pos001 30 ms",
        30.0,
        lambda m: m.position("pos001").exposure_ms["Brightfield"],
        f"{PLANE}[@TheC='0']/@ExposureTime",
    ),
    # --- log header
    Fact(
        "AcquisitionDate 2018-09-28T17:18:14 ('Experiment started at')",
        "2018-09-28T17:18:14",
        lambda m: m.acquisition_start.isoformat(),
        "Image/AcquisitionDate/text()",
    ),
    Fact(
        "description contains the aim",
        Contains("Compare morphology markers across microscopes"),
        lambda m: m.description,
        "Image/Description/text()",
    ),
    Fact(
        "description names the authors",
        Contains("Julian Pietsch, Ivan Clark"),
        lambda m: m.description,
        "Image/Description/text()",
    ),
    Fact("microscope name", "Microscope1", lambda m: m.microscope, "Instrument/Microscope/@Model"),
    Fact(
        "OMERO tags 28-Sep-2018 and Batgirl as TagAnnotations",
        ["28-Sep-2018", "Batgirl"],
        lambda m: m.tags,
        "StructuredAnnotations/TagAnnotation/Value/text()",
    ),
    Fact(
        "key-value Strain, one pair per strain",
        ["Mig1-GFP", "Dot6-GFP", "Maf1-GFP", "Sfp1-GFP", "Msn2-GFP"],
        lambda m: _kv(m, "Strain"),
        f"{KV}[@K='Strain']/text()",
    ),
    Fact(
        "key-value Author, one pair per author",
        ["Julian Pietsch", "Ivan Clark"],
        lambda m: _kv(m, "Author"),
        f"{KV}[@K='Author']/text()",
    ),
    Fact(
        "key-value OMERO project",
        ["Morphology detection"],
        lambda m: _kv(m, "Project"),
        f"{KV}[@K='Project']/text()",
    ),
    Fact(
        "key-value GFP light path",
        Contains("470nm LED\n->Combiner cube"),
        lambda m: m.channel("GFP").light_path,
        f"{KV}[@K='Light path GFP']/text()",
    ),
    Fact(
        "key-value GFP EM gain",
        ["270"],
        lambda m: _kv(m, "GFP EM gain"),
        f"{KV}[@K='GFP EM gain']/text()",
    ),
    Fact(
        "key-value pump contents",
        ["2% glucose in SC"],
        lambda m: _kv(m, "Pump COM5 Contents"),
        f"{KV}[@K='Pump COM5 Contents']/text()",
    ),
    Fact(
        "key-value Micromanager config",
        Contains("Batgirl5_9_18noemissionfilter.txt"),
        lambda m: _kv(m, "Micromanager config file")[0],
        f"{KV}[@K='Micromanager config file']/text()",
    ),
    # --- log body: per-plane DeltaT relative to the experiment start
    Fact(
        "DeltaT t0 GFP 8 s (set at 17:18:22)",
        8.0,
        lambda m: _delta_t(m, 0, "GFP"),
        f"{PLANE}[@TheT='0'][@TheC='2']/@DeltaT",
    ),
    Fact(
        "DeltaT t1 GFP 308 s (set at 17:23:22)",
        308.0,
        lambda m: _delta_t(m, 1, "GFP"),
        f"{PLANE}[@TheT='1'][@TheC='2']/@DeltaT",
    ),
    Fact(
        "DeltaT t2 Brightfield 601 s (set at 17:28:15)",
        601.0,
        lambda m: _delta_t(m, 2, "Brightfield"),
        f"{PLANE}[@TheT='2'][@TheC='0']/@DeltaT",
    ),
]


def _select(root: ET.Element, path: str) -> list[str]:
    """Values at an XPath-ish path: ``.../@Attr`` or ``.../text()`` (ElementTree's subset)."""
    if path.endswith("/text()"):
        return [el.text or "" for el in root.findall(path[: -len("/text()")], NS)]
    nodes, _, attr = path.rpartition("/@")
    return [el.attrib[attr] for el in root.findall(nodes, NS) if attr in el.attrib]


def _cast(value: str, like: Any) -> Any:
    if isinstance(like, str | Contains):
        return value
    if isinstance(like, int):
        n = int(value)
        return n & 0xFFFFFFFF  # OME stores colours as signed 32-bit RGBA
    return float(value)


def _holds(expected: Any, actual: Any) -> bool:
    if isinstance(expected, Contains):
        return expected.text in actual
    if isinstance(expected, float):
        return actual == pytest.approx(expected, abs=1e-6)
    return actual == expected


@pytest.fixture(scope="module")
def meta(swainlab_sample: Path) -> ExperimentMetadata:
    return SwainLabParser().parse(swainlab_sample)


@pytest.fixture(scope="module")
def converted(swainlab_sample: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("facts")
    result = convert(swainlab_sample, out, workers=1, progress="off")
    assert [p.status for p in result.positions] == ["ok"]
    return out


@pytest.fixture(scope="module")
def ome_root(converted: Path) -> ET.Element:
    with tifffile.TiffFile(converted / "pos001.ome.tiff") as tif:
        return ET.fromstring(tif.ome_metadata)


@pytest.mark.parametrize("fact", FACTS, ids=str)
def test_fact_parsed(fact: Fact, meta: ExperimentMetadata) -> None:
    """The parser extracts the fact with its value (no converter involved)."""
    if fact.model is None:
        pytest.skip("value chosen by the OME builder, not read from the files")
    assert _holds(fact.expected, fact.model(meta)), fact.model(meta)


@pytest.mark.parametrize("fact", FACTS, ids=str)
def test_fact_in_ome_xml(fact: Fact, ome_root: ET.Element) -> None:
    """The fact lands where the OME model has a home for it, in the converted file."""
    values = [
        _cast(v, fact.expected if not isinstance(fact.expected, list) else fact.expected[0])
        for v in _select(ome_root, fact.xpath)
    ]
    assert values, f"nothing at {fact.xpath}"
    if isinstance(fact.expected, list):
        assert values == fact.expected
    else:
        assert all(_holds(fact.expected, v) for v in values), values


def test_annotations_are_linked_from_the_image(ome_root: ET.Element) -> None:
    refs = {el.attrib["ID"] for el in ome_root.findall("Image/AnnotationRef", NS)}
    tags = {el.attrib["ID"] for el in ome_root.findall("StructuredAnnotations/TagAnnotation", NS)}
    maps = {
        el.attrib["ID"]
        for el in ome_root.findall(
            f"StructuredAnnotations/MapAnnotation[@Namespace='{MAP_NS}']", NS
        )
    }
    assert tags and maps and tags | maps <= refs


def test_every_plane_has_deltat_from_the_log(
    ome_root: ET.Element, meta: ExperimentMetadata
) -> None:
    planes = ome_root.findall(PLANE, NS)
    assert len(planes) == 5 * 3 * 3
    channels = [c.name for c in meta.channels]
    for p in planes:
        t, c = int(p.attrib["TheT"]), int(p.attrib["TheC"])
        assert float(p.attrib["DeltaT"]) == _delta_t(meta, t, channels[c])


def test_tables_written_next_to_the_ome_tiffs(converted: Path) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    names = manifest["tables"]["names"]
    assert {
        "channels",
        "positions",
        "pumps",
        "z_sectioning",
        "time_settings",
        "switching",
        "plane_times",
    } <= set(names)
    h5 = converted / manifest["tables"]["path"]
    pos = pd.read_hdf(h5, "positions")
    assert pos.loc[pos["Position name"] == "pos001", "GFP"].item() == 7
    assert pos["X position"].dtype == "float64"
