"""The shared real experiment (../shared/samples/swainlab-demo) converts with every plane exact.

Also checks that the facts of the lab's Acq/log files land in the OME-XML where OMERO reads them
(stage position, per-position exposure, z step, interval, log times, tags, key-value pairs).
"""

from __future__ import annotations

import json
from pathlib import Path

import imagecodecs
import numpy as np
import pytest
import tifffile
from ome_types import from_xml

from posdir2ometiff.convert import convert
from posdir2ometiff.manifest import validate_manifest


@pytest.fixture(scope="module")
def converted(swainlab_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sample_out")
    result = convert(swainlab_sample, out, workers=1, progress="off")
    assert result.ok and [p.name for p in result.positions] == ["pos001"]
    return out


def test_every_plane_equals_its_png(converted: Path, swainlab_sample: Path) -> None:
    with tifffile.TiffFile(converted / "pos001.ome.tiff") as tf:
        series = tf.series[0]
        assert series.axes == "TCZYX"
        data = series.asarray()
    assert data.shape == (3, 3, 5, 512, 512) and data.dtype == np.uint16
    compared = 0
    for ti in range(3):
        for ci, ch in enumerate(["Brightfield", "DIC", "GFP"]):
            for zi in range(5):
                png = swainlab_sample / "pos001" / f"microscope1_{ti + 1:06d}_{ch}_{zi + 1:03d}.png"
                np.testing.assert_array_equal(data[ti, ci, zi], imagecodecs.imread(png))
                compared += 1
    assert compared == 45


def test_acquisition_facts_land_in_the_ome_xml(converted: Path) -> None:
    with tifffile.TiffFile(converted / "pos001.ome.tiff") as tf:
        ome = from_xml(tf.pages[0].description)
    img = ome.images[0]
    px = img.pixels
    planes = {(p.the_t, p.the_c, p.the_z): p for p in px.planes}
    assert img.name == "pos001"
    assert [c.name for c in px.channels] == ["Brightfield", "DIC", "GFP"]
    assert px.channels[2].color.as_rgb_tuple()[:3] == (0, 255, 0)  # GFP green by default
    assert px.physical_size_z == pytest.approx(0.6)  # Z_sectioning spacing
    assert px.time_increment == 300  # Time_settings interval
    assert img.stage_label.x == 10846.5 and img.stage_label.y == 10208.1  # Points table
    assert planes[(0, 2, 0)].exposure_time == 7  # GFP at pos001 from the positions table
    assert planes[(0, 0, 0)].exposure_time == 30  # Brightfield
    assert planes[(0, 0, 0)].position_x == 10846.5
    # log: "Channel:GFP set at:28-Sep-2018 17:18:22", experiment started 17:18:14 → 8 s
    assert planes[(0, 2, 0)].delta_t == pytest.approx(8.0)
    assert planes[(1, 2, 0)].delta_t > 290  # second timepoint ~5 min later
    assert img.acquisition_date.isoformat().startswith("2018-09-28T17:18:14")
    assert ome.instruments[0].microscope.model == "Microscope1"
    assert "Compare morphology markers" in img.description
    tags = {t.value for t in ome.structured_annotations.tag_annotations}
    assert {"28-Sep-2018", "Batgirl"} <= tags
    kv = ome.structured_annotations.map_annotations[0]
    assert kv.namespace == "openmicroscopy.org/omero/client/mapAnnotation"
    pairs = [(m.k, m.value) for m in kv.value.ms]
    assert ("Strain", "Mig1-GFP") in pairs and ("Strain", "Msn2-GFP") in pairs
    assert ("Position group", "1") in pairs and ("PFS offset", "19.225") in pairs


def test_manifest_and_tables(converted: Path) -> None:
    manifest = json.loads((converted / "manifest.json").read_text())
    validate_manifest(manifest)
    entry = manifest["positions"]["pos001"]
    assert entry["dimensions"] == {"X": 512, "Y": 512, "Z": 5, "C": 3, "T": 3}
    assert len(entry["sources"]) == 45 and entry["missing_planes"] == []
    assert manifest["metadata"]["omero_project"] == "Morphology detection"
    assert manifest["tables"]["path"] == "experiment.h5"
    assert (converted / "experiment.h5").is_file()
