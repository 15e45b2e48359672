"""OUT/report.html: previews from the pyramid's smallest level while writing, the t×c plane grid,
warnings, the OME-XML metadata, --no-report, and that it renders in headless Chromium."""

from __future__ import annotations

import base64
import json
import logging
import re
import shutil
import subprocess
from pathlib import Path

import imagecodecs
import numpy as np
import pytest

import posdir2ometiff.planes as planes_mod
import posdir2ometiff.position as position_mod
from posdir2ometiff.cli import main
from posdir2ometiff.convert import convert
from posdir2ometiff.demo import make_demo
from posdir2ometiff.report import (
    PREVIEW_DIR,
    REPORT_NAME,
    PreviewCollector,
    plane_grid,
    preview_timepoints,
    render_report,
    stretch_to_uint8,
)
from posdir2ometiff.writer import write_ometiff


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main configures the root logger; put it back for other tests' caplog."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _png(b64: str) -> np.ndarray:
    return imagecodecs.png_decode(base64.b64decode(b64))


def _images(page: str) -> list[str]:
    return re.findall(r'src="data:image/png;base64,([^"]+)"', page)


def test_preview_timepoints_are_first_middle_last() -> None:
    assert preview_timepoints(1) == [0]
    assert preview_timepoints(2) == [0, 1]
    assert preview_timepoints(7) == [0, 3, 6]
    assert preview_timepoints(0) == []


def test_collector_takes_the_max_over_z_per_channel_and_stretches_per_channel() -> None:
    t, c, z = 3, 2, 4
    col = PreviewCollector(t, c, z, ["A", "B"])
    rng = np.random.default_rng(0)
    planes = rng.integers(0, 1000, (t, c, z, 8, 8)).astype(np.uint16)
    for i, plane in enumerate(planes.reshape(-1, 8, 8)):  # XYZCT: z fastest, then c, then t
        col.add(i, plane)
    res = col.result()
    assert res["timepoints"] == [0, 1, 2] and res["channels"] == ["A", "B"]
    for ci in range(c):
        expected = stretch_to_uint8([planes[ti, ci].max(axis=0) for ti in range(t)])
        for ti in range(t):
            assert np.array_equal(_png(res["images"][str(ci)][str(ti)]), expected[ti])
    stretched = stretch_to_uint8([np.arange(1000, dtype=np.float32).reshape(40, 25)])[0]
    assert stretched.dtype == np.uint8 and stretched.min() == 0 and stretched.max() == 255


def test_writer_hands_over_the_smallest_level_of_every_plane(tmp_path: Path) -> None:
    planes = [np.full((64, 64), i, np.uint16) for i in range(3)]
    got: list[tuple[int, tuple[int, int], int]] = []
    levels = write_ometiff(tmp_path / "x.ome.tiff", iter(planes), count=3, shape=(64, 64),
                           dtype=np.uint16, ome_xml="<OME/>", tile=16, pyramid="auto",
                           on_level=lambda i, lv: got.append((i, lv.shape, int(lv[0, 0]))))
    assert levels == 3  # 64 → 32 → 16: the smallest level is one tile
    assert got == [(0, (16, 16), 0), (1, (16, 16), 1), (2, (16, 16), 2)]


@pytest.fixture
def converted(tmp_path: Path):
    spec = make_demo(tmp_path / "exp", positions=2, z=3, t=4, size=64, seed=4)
    (spec.folder / "pos002" / "demo_000002_GFP_002.png").unlink()  # one missing plane
    return spec, tmp_path / "out"


def test_every_conversion_writes_a_self_contained_report(converted, monkeypatch) -> None:
    spec, out = converted
    reads: list[Path] = []
    real_read = planes_mod.read_plane

    def counting(path: Path):
        reads.append(path)
        return real_read(path)

    monkeypatch.setattr(planes_mod, "read_plane", counting)
    monkeypatch.setattr(position_mod, "read_plane", counting)
    result = convert(spec.folder, out, workers=1, progress="off", tile=32)
    assert result.ok
    # previews cost no second read: every source file was decoded exactly once
    assert len(reads) == len(set(reads)) == 2 * 3 * 3 * 4 - 1
    page = (out / REPORT_NAME).read_text(encoding="utf-8")
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")  # no network
    assert "https://" not in page
    for pos in ("pos001", "pos002"):
        assert f'id="{pos}"' in page
    images = _images(page)
    assert len(images) == 2 * 3 * 3  # positions × channels × (first, middle, last t)
    smallest = _png(images[0])
    assert smallest.shape == (32, 32) and smallest.dtype == np.uint8  # 64² → level 32² (tile 32)
    assert smallest.max() == 255 and smallest.min() == 0  # contrast-stretched
    assert 't = 0' in page and 't = 1' in page and 't = 3' in page
    # sizes, the missing plane on the grid and as a warning, the OME-XML's metadata
    assert "64 × 64 × 3 × 3 × 4" in page
    assert page.count('class="miss"') == 1 and "t=1 c=2: 1/3 z missing" in page
    assert "1 missing plane(s) written as zeros (first: t=2 c=GFP z=2)" in page
    assert "Z step</th><td>0.6 µm" in page and "Time increment</th><td>300.0 s" in page
    assert "Channel 2</th><td>GFP, colour #00FF00" in page
    assert "Demo project" in page  # experiment metadata (the log's OMERO project)
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["positions"]) == {p.stem for p in (out / PREVIEW_DIR).glob("*.json")}


def test_skipped_positions_keep_their_previews_and_no_report_turns_it_off(converted) -> None:
    spec, out = converted
    assert main([str(spec.folder), "-o", str(out), "--workers", "1", "-q"]) == 0
    first = (out / REPORT_NAME).read_text(encoding="utf-8")
    (out / REPORT_NAME).unlink()
    assert main([str(spec.folder), "-o", str(out), "--workers", "1", "-q"]) == 0  # all up to date
    assert _images((out / REPORT_NAME).read_text(encoding="utf-8")) == _images(first)
    (out / REPORT_NAME).unlink()
    assert main([str(spec.folder), "-o", str(out), "--workers", "1", "-q", "--no-report",
                 "--overwrite"]) == 0
    assert not (out / REPORT_NAME).exists()
    from posdir2ometiff.cli import build_parser

    assert "--no-report" in build_parser().format_help()


def test_not_captured_planes_failed_positions_and_absent_positions_are_shown() -> None:
    entry = {
        "status": "ok", "output": "p.ome.tiff", "dimensions": {"X": 8, "Y": 8, "Z": 2, "C": 2, "T": 3},
        "channels": ["DIC", "GFP"], "missing_planes": [],
        "not_captured_planes": [
            {"t": 2, "c": 1, "z": z, "label": f"t=3 c=GFP z={z + 1}", "path": None,
             "reason": "skipped by the acquisition (Skip 2)"} for z in range(2)],
        "unmatched_files": ["p/notes.txt"],
    }
    grid = plane_grid(entry)
    assert grid.count('class="lost"') == 1 and grid.count('class="ok"') == 5
    page = render_report(
        {"source": "/x/exp", "metadata": {"parsers": [], "tags": ["a"]},
         "absent_positions": ["pos009"],
         "positions": {"p": entry, "q": {"status": "failed", "error": "q/x.png: truncated PNG",
                                          "missing_planes": [], "sources": []}}},
        {}, {})
    assert "2 plane(s) not captured by the microscope" in page and "Skip 2" in page
    assert "q/x.png: truncated PNG" in page and 'class="pos failed"' in page
    assert "pos009" in page and "no metadata file was recognised" in page
    assert "p/notes.txt" in page
    assert "<script" not in page


def test_a_conversion_with_failed_captures_and_absent_positions_reports_them(tmp_path) -> None:
    src, out = tmp_path / "src", tmp_path / "out"
    make_demo(src, positions=2, z=2, t=3, size=32, failed=[("pos001", 1, "GFP")], absent=1)
    assert convert(src, out, workers=1, progress="off").ok
    page = (out / REPORT_NAME).read_text(encoding="utf-8")
    pos001 = page[page.index('id="pos001"'):page.index('id="pos002"')]
    assert pos001.count('class="lost"') == 1 and 't=1 c=2: 2/2 z not captured' in pos001
    assert "2 plane(s) not captured by the microscope" in pos001
    assert "1 position(s) in the acquisition table have no folder: pos003" in page


# --------------------------------------------------------------------------- Chromium

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_CHECK = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});</script>"""


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / "profile"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
           *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (scripts/setup.d/chromium.sh)")
def test_report_renders_with_its_images_in_headless_chromium(converted, tmp_path: Path) -> None:
    spec, out = converted
    assert convert(spec.folder, out, workers=1, progress="off").ok
    page = (out / REPORT_NAME).read_text(encoding="utf-8")
    # A copy with a probe script: every <img> decoded (naturalWidth > 0) once the page loaded.
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _CHECK + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=5000", "--dump-dom", probe.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    counts = re.search(r'data-images="(\d+)/(\d+)"', dom.stdout)
    assert counts, dom.stdout[:500]
    assert counts.group(1) == counts.group(2) == str(len(_images(page)))
    # The report itself, as a person sees it: a screenshot that is not blank and has the
    # previews' dark pixels (a page of text alone is almost all white).
    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}",
                    (out / REPORT_NAME).as_uri())
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    pixels = imagecodecs.png_decode(shot.read_bytes())[..., :3]
    dark = (pixels.max(axis=-1) < 64).mean()
    assert pixels.std() > 20 and dark > 0.02, (pixels.std(), dark)


def test_previews_are_encoded_as_the_last_plane_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    """The encoding starts with the last plane, in its own thread (the writer is flushing the
    file then); result() hands over that thread's answer, and its error."""
    import threading

    col = PreviewCollector(2, 1, 2, ["A"])
    threads: list[str] = []
    real = PreviewCollector._result

    def spy(self):  # type: ignore[no-untyped-def]
        threads.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(PreviewCollector, "_result", spy)
    for i in range(3):
        col.add(i, np.full((8, 8), i, np.uint16))
    assert threads == []  # not before the last plane
    col.add(3, np.full((8, 8), 3, np.uint16))
    res = col.result()
    assert threads == ["previews"] and set(res["images"]["0"]) == {"0", "1"}

    broken = PreviewCollector(1, 1, 1)
    monkeypatch.setattr(PreviewCollector, "_result", lambda self: 1 / 0)
    broken.add(0, np.zeros((8, 8), np.uint16))
    with pytest.raises(ZeroDivisionError):
        broken.result()


def test_each_channel_is_encoded_once_its_last_stack_is_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel's previews share one contrast stretch, so they are encoded once its last
    z-stack is in: while later channels are still being written (in the writer's thread), and
    the last channel's beside the file's final flush. The same previews as encoded at the end."""
    import threading

    t, c, z = 3, 3, 2
    rng = np.random.default_rng(1)
    planes = rng.integers(0, 4000, (t, c, z, 16, 16)).astype(np.uint16)
    col = PreviewCollector(t, c, z, ["A", "B", "C"])
    when: list[tuple[int, int, str]] = []  # (channel, planes added by then, thread)
    added = [0]
    real = PreviewCollector._channel

    def spy(self, ch):  # type: ignore[no-untyped-def]
        when.append((ch, added[0], threading.current_thread().name))
        return real(self, ch)

    monkeypatch.setattr(PreviewCollector, "_channel", spy)
    for i, plane in enumerate(planes.reshape(-1, 16, 16)):
        col.add(i, plane)
        added[0] = i + 1
    res = col.result()
    main = threading.current_thread().name
    # Channel 0's last stack ends at plane 13 of 18 (t=2: planes 12-17), channel 1's at 15.
    assert when[:2] == [(0, 13, main), (1, 15, main)]
    assert [(ch, thread) for ch, _n, thread in when[2:]] == [(2, "previews")]  # at the 18th
    full = PreviewCollector(t, c, z, ["A", "B", "C"])
    monkeypatch.setattr(PreviewCollector, "_channel", real)
    for i, plane in enumerate(planes.reshape(-1, 16, 16)):
        full.add(i, plane)
    assert res == full._result()


def _rows_both_ways(xml: str) -> tuple[list, list]:
    import xml.etree.ElementTree as ET

    from posdir2ometiff.report import summary_rows, summary_tree

    return summary_rows(ET.fromstring(xml)), summary_rows(summary_tree(xml))


def test_the_summary_reads_only_what_comes_before_the_planes(
    tmp_path: Path, swainlab_sample: Path
) -> None:
    """The OME-XML summary (report.summary_tree) parses up to the first TiffData and the first
    Plane's tag: the same rows as the whole tree, for the demo's files and the lab's sample
    (stage positions, channels with colours and wavelengths, objective), and for text in
    another shape (prefixed names, a Plane with children, no Plane at all)."""
    import tifffile

    sources = [make_demo(tmp_path / "demo", positions=1, z=2, t=2, size=32).folder,
               swainlab_sample]
    for i, src in enumerate(sources):
        out = tmp_path / f"out{i}"
        convert(src, out, progress="off", report=False)
        for tiff in sorted(out.glob("*.ome.tiff")):
            with tifffile.TiffFile(tiff) as tf:
                xml = tf.pages[0].description
            whole, part = _rows_both_ways(xml)
            assert whole == part and len(whole) >= 5, (tiff, whole, part)
            assert any(k.startswith("Stage position") for k, _ in whole) or i == 0
            # Another writer's shapes: the same rows, whichever way the text is read.
            prefixed = xml.replace("<", "<ome:").replace("<ome:/", "</ome:").replace(
                "<ome:?", "<?").replace('xmlns="', 'xmlns:ome="')
            assert _rows_both_ways(prefixed)[1] == whole
            with_child = re.sub(r"(<Plane [^>]*?)/>", r"\1><HashSHA1>00</HashSHA1></Plane>",
                                xml, count=1)
            assert _rows_both_ways(with_child) == (whole, whole)
            no_planes = re.sub(r"\s*<Plane [^>]*/>", "", xml)
            assert _rows_both_ways(no_planes)[0] == _rows_both_ways(no_planes)[1]
