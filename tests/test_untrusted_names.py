"""Untrusted plane files, folder names and experiment.yml (issue #14, points 4, 5 and 8)."""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

import pytest

from posdir2ometiff.layout import (
    DuplicatePlaneError,
    LayoutError,
    check_output_folder,
    discover,
    scan_position,
)
from posdir2ometiff.metadata.plugins import MetadataError
from posdir2ometiff.metadata.sidecar import parse_sidecar


def touch(folder: Path, *names: str | bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / (os.fsdecode(n) if isinstance(n, bytes) else n)).write_bytes(b"x")


# --- point 4: no plane dropped without a word --------------------------------------------------


def test_channels_differing_only_in_case_are_a_duplicate_naming_both(tmp_path: Path) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png", "a_1_gfp_1.png")
    with pytest.raises(DuplicatePlaneError, match=r"a_1_GFP_1\.png and .*a_1_gfp_1\.png.*case"):
        scan_position(pos)


def test_case_duplicate_fails_its_position_only(tmp_path: Path) -> None:
    touch(tmp_path / "pos001", "a_1_GFP_1.png", "a_1_gfp_1.png")
    touch(tmp_path / "pos002", "a_1_GFP_1.png")
    bad, good = discover(tmp_path)
    assert bad.error and "a_1_gfp_1.png" in bad.error and good.error is None


def test_one_channel_spelt_two_ways_is_one_channel(tmp_path: Path, caplog) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png", "a_2_gfp_1.png")
    with caplog.at_level(logging.WARNING):
        layout = scan_position(pos)
    assert layout.channels == ["GFP"] and len(layout.files) == 2
    assert "'gfp' taken as 'GFP'" in caplog.text


@pytest.mark.parametrize("kind", ["folder", "fifo", "broken link"])
def test_non_regular_file_under_a_plane_name_fails_the_position(tmp_path: Path, kind) -> None:
    pos = tmp_path / "pos001"
    touch(pos, "a_1_GFP_1.png")
    odd = pos / "a_1_GFP_2.png"
    if kind == "folder":
        odd.mkdir()
    elif kind == "fifo":
        os.mkfifo(odd)
    else:
        odd.symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(LayoutError, match=rf"(?i)a_1_GFP_2\.png: .*{kind.split()[-1]}"):
        scan_position(pos)


def test_pattern_matching_no_file_is_an_error_saying_why(tmp_path: Path) -> None:
    touch(tmp_path / "pos001", "a_1_GFP_1.png")
    with pytest.raises(LayoutError, match=r"matches no file in 1 position folder.*a_1_GFP_1\.png"):
        discover(tmp_path, pattern=r"(?P<t>\d+)-(?P<c>\w+)-(?P<z>\d+)\.tif")


def test_output_inside_a_position_folder_is_refused(tmp_path: Path) -> None:
    touch(tmp_path / "pos001", "a_1_GFP_1.png")
    for out in (tmp_path / "pos001", tmp_path / "pos001" / "out"):
        with pytest.raises(LayoutError, match="inside position folder"):
            check_output_folder(tmp_path, out)
    check_output_folder(tmp_path, tmp_path / "out")  # beside the positions: fine


def test_unreadable_position_folder_fails_that_position_only(tmp_path: Path, monkeypatch) -> None:
    touch(tmp_path / "pos001", "a_1_GFP_1.png")
    touch(tmp_path / "pos002", "a_1_GFP_1.png")
    real = os.scandir

    def scandir(path=None):
        if Path(path).name == "pos001":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # as root, chmod 000 would not stop us
    bad, good = discover(tmp_path)
    assert bad.error == f"{tmp_path / 'pos001'}: cannot be read (Permission denied)"
    assert good.error is None and len(good.files) == 1


# --- point 5: names and values as they come ----------------------------------------------------


def test_non_utf8_file_name_is_kept_and_warned_about(tmp_path: Path, caplog) -> None:
    pos = tmp_path / "pos001"
    touch(pos, b"caf\xe9_1_GFP_1.png")
    with caplog.at_level(logging.WARNING):
        layout = scan_position(pos)
    (path,) = layout.files.values()
    assert os.fsencode(path.name) == b"caf\xe9_1_GFP_1.png"  # byte-exact
    assert r"not valid UTF-8, e.g. caf\xe9_1_GFP_1.png" in caplog.text


def _sidecar(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "experiment.yml"
    path.write_text(text)
    return path


def test_yaml_alias_bomb_is_refused_quickly_and_small(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]")
    path = _sidecar(tmp_path, "\n".join(lines) + "\n")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.process_time()
    with pytest.raises(MetadataError, match="experiment.yml: expands to more than"):
        parse_sidecar(path)
    # Bounds far above the real cost (milliseconds, kilobytes) and far below the bomb's (10**9
    # values): the assertion is about the kind of cost, not a speed target.
    assert time.process_time() - started < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 50 * 1024  # KiB


def test_yaml_recursive_alias_is_refused(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="refers to itself"):
        parse_sidecar(_sidecar(tmp_path, "tags: &a [*a]\n"))


def test_yaml_aliases_in_a_real_sidecar_still_work(tmp_path: Path) -> None:
    meta = parse_sidecar(_sidecar(tmp_path, "tags: &t [yeast, glucose]\nstrains: *t\n"))
    assert meta.tags == ["yeast", "glucose"] and meta.strains == ["yeast", "glucose"]


@pytest.mark.parametrize(
    "text, key",
    [
        ("pixel_size_um: .inf\n", "pixel_size_um: inf is not a finite number"),
        ("z: {spacing_um: .nan}\n", "z.spacing_um: nan is not a finite number"),
        ("acquisition_start: '2018-02-30T10:00:00'\n", "acquisition_start: '2018-02-30T10:00:00'"),
        ("acquisition_start: 2018-02-30\n", "invalid value: day is out of range"),
        ("time: {interval_s: -5}\n", "time.interval_s"),
    ],
)
def test_impossible_values_name_the_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(MetadataError) as exc:
        parse_sidecar(_sidecar(tmp_path, text))
    assert str(exc.value).startswith(str(tmp_path / "experiment.yml"))
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_huge_sidecar_is_refused_before_parsing(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yml"
    with open(path, "wb") as fh:
        fh.truncate(5 * 1024 * 1024)
    with pytest.raises(MetadataError, match="a sidecar is at most"):
        parse_sidecar(path)


def test_log_with_old_mac_line_ends_is_read_like_any_other(
    tmp_path: Path, swainlab_sample: Path
) -> None:
    """A CR-only copy of the sample's log gives the same metadata as the original."""
    import shutil

    from posdir2ometiff.metadata.plugins import load_metadata

    cr = tmp_path / "cr"
    shutil.copytree(swainlab_sample, cr, ignore=shutil.ignore_patterns("pos*"))
    (log,) = cr.glob("*log.txt")
    log.write_bytes(log.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r"))
    assert b"\n" not in log.read_bytes()
    want = load_metadata(swainlab_sample, "swainlab", None)
    got = load_metadata(cr, "swainlab", None)
    assert got.plane_times and len(got.plane_times) == len(want.plane_times)
    assert got.acquisition_start == want.acquisition_start
    assert [c.name for c in got.channels] == [c.name for c in want.channels]
