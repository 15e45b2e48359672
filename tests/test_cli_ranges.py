"""Every numeric option is range-checked where it is parsed: one line naming it, exit 2
(issue #14, point 8), and a folder named like a sub-command still converts (point 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from omero_push import cli as push_cli
from posdir2ometiff import cli as convert_cli
from tests.test_push_support import isolate_root_logging

_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)


def _usage_error(main, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--workers", "0"], "--workers"),
        (["--workers", "-3"], "--workers"),
        (["--threads", "0"], "--threads"),
        (["--slurm-jobs", "0"], "--slurm-jobs"),
        (["--slurm-cores", "-4"], "--slurm-cores"),
        (["--tile", "7"], "--tile"),
        (["--tile", "0"], "--tile"),
        (["--tile", "1e9"], "--tile"),
        (["--pyramid", "0"], "--pyramid"),
        (["--pyramid", "999"], "--pyramid"),
        (["--pixel-size", "nan"], "--pixel-size"),
        (["--pixel-size", "inf"], "--pixel-size"),
        (["--z-step", "-1"], "--z-step"),
        (["--time-interval", "0"], "--time-interval"),
    ],
)
def test_converter_options_out_of_range(tmp_path: Path, capsys, extra, option) -> None:
    line = _usage_error(convert_cli.main, [str(tmp_path), "-o", str(tmp_path / "o"), *extra],
                        capsys)
    assert line.startswith("posdir2ometiff: error: argument") and option in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "extra, option",
    [(["--size", "0"], "--size"), (["-z", "0"], "-z"), (["-t", "-1"], "-t"),
     (["--num-positions", "0"], "--num-positions"), (["--seed", "-1"], "--seed")],
)
def test_demo_options_out_of_range(tmp_path: Path, capsys, extra, option) -> None:
    line = _usage_error(convert_cli.main, ["demo", str(tmp_path / "d"), *extra], capsys)
    assert option in line and not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    "extra, option",
    [
        (["--port", "99999"], "--port"),
        (["--port", "0"], "--port"),
        (["--chunk-size", "0"], "--chunk-size"),
        (["--chunk-size", "inf"], "--chunk-size"),
        (["--chunk-size", "-2"], "--chunk-size"),
        (["--tile", "0x0"], "--tile"),
        (["--tile", "7xz"], "--tile"),
        (["--parallel", "0"], "--parallel"),
        (["--retries", "-1"], "--retries"),
    ],
)
def test_push_options_out_of_range(tmp_path: Path, capsys, extra, option) -> None:
    line = _usage_error(push_cli.main, [str(tmp_path), "--dry-run", *extra], capsys)
    assert line.startswith("omero-push: error: argument") and option in line


def test_push_tile_parses_wxh_and_square() -> None:
    args = push_cli.build_parser().parse_args(["x", "--tile", "256x128"])
    assert args.tile == (256, 128)
    assert push_cli.build_parser().parse_args(["x", "--tile", "64"]).tile == (64, 64)


def test_folder_named_demo_converts(tmp_path: Path, monkeypatch) -> None:
    """``posdir2ometiff demo -o out`` and ``./demo -o out`` convert the folder ``demo``."""
    from posdir2ometiff.demo import make_demo

    monkeypatch.chdir(tmp_path)
    make_demo(tmp_path / "demo", positions=1, channels=["GFP"], z=1, t=1, size=32)
    assert convert_cli.main(["demo", "-o", "out1", "-q", "--workers", "1"]) == 0
    assert (tmp_path / "out1" / "pos001.ome.tiff").is_file()
    assert convert_cli.main(["./demo", "-o", "out2", "-q", "--workers", "1"]) == 0
    assert (tmp_path / "out2" / "pos001.ome.tiff").is_file()
