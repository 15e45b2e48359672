"""The command line: exit statuses, one-line errors, progress output, quiet/verbose, demo command."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import tifffile
from ome_types import from_xml

from posdir2ometiff.cli import main
from posdir2ometiff.demo import make_demo
from posdir2ometiff.progress import Progress


@pytest.fixture
def demo(tmp_path: Path):
    return make_demo(tmp_path / "exp", positions=2, z=2, t=2, size=48, seed=2)


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main configures the root logger; put it back so other tests' caplog still works."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_convert_ok_exit_0_and_summary(demo, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    assert main([str(demo.folder), "-o", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "2 converted, 0 up to date, 0 failed" in err
    assert "planes (100%)" in err and "planes/s" in err  # plain progress lines: not a terminal
    assert sorted(p.name for p in out.iterdir()) == [
        ".previews", "experiment.h5", "manifest.json", "pos001.ome.tiff", "pos002.ome.tiff",
        "report.html"]
    assert main([str(demo.folder), "-o", str(out), "--workers", "1"]) == 0
    assert "0 converted, 2 up to date" in capsys.readouterr().err


def test_options_reach_the_manifest(demo, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = [str(demo.folder), "-o", str(out), "--workers", "2", "--tile", "32",
            "--compression", "lzw", "--pyramid", "2", "--positions", "pos002",
            "--pixel-size", "0.1", "--z-step", "0.5", "--time-interval", "60", "-q"]
    assert main(argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["tile"] == 32 and manifest["options"]["compression"] == "lzw"
    assert manifest["options"]["pixel_size_um"] == 0.1
    assert list(manifest["positions"]) == ["pos002"]
    assert manifest["positions"]["pos002"]["pyramid_levels"] == 2
    # the overrides beat the demo's Acq file (z spacing 0.6 µm there) in the OME-XML
    with tifffile.TiffFile(out / "pos002.ome.tiff") as tf:
        assert tf.pages[0].tile == (32, 32) and len(tf.pages[0].subifds) == 1
        px = from_xml(tf.pages[0].description).images[0].pixels
    assert (px.physical_size_x, px.physical_size_z, px.time_increment) == (0.1, 0.5, 60)


def test_failed_position_one_line_per_failure_exit_1(demo, tmp_path: Path, capsys) -> None:
    for pos in ("pos001", "pos002"):
        bad = demo.folder / pos / "demo_000001_GFP_001.png"
        bad.write_bytes(bad.read_bytes()[:100])
    assert main([str(demo.folder), "-o", str(tmp_path / "out"), "--workers", "1", "-q"]) == 1
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 2, err
    assert all(ln.startswith("ERROR: ") and "demo_000001_GFP_001.png" in ln for ln in lines)
    assert "Traceback" not in err


def test_whole_run_errors_are_one_line(tmp_path: Path, capsys) -> None:
    assert main([str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("posdir2ometiff: error:") and "not a folder" in err
    assert "\n" not in err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "no position folder matches" in capsys.readouterr().err
    assert main([str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--metadata", "nosuch"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("posdir2ometiff: error:") and "\n" not in err


def test_bad_arguments_exit_2(tmp_path: Path, capsys) -> None:
    for argv in (["x"], ["x", "-o", "y", "--compression", "jpeg"], ["x", "-o", "y", "--pyramid", "0"],
                 ["x", "-o", "y", "--pixel-size", "-1"], ["x", "-o", "y", "-q", "-v"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # a range error is a usage error (issue #14)
        main([str(tmp_path), "-o", str(tmp_path / "o"), "--tile", "100"])
    assert exc.value.code == 2 and "multiple of 16" in capsys.readouterr().err


def test_demo_subcommand_and_module_entry_point(tmp_path: Path) -> None:
    assert main(["demo", str(tmp_path / "d"), "--num-positions", "1", "-z", "1", "-t", "1",
                 "--size", "32", "-q"]) == 0
    assert len(list((tmp_path / "d" / "pos001").glob("*.png"))) == 3
    proc = subprocess.run([sys.executable, "-m", "posdir2ometiff", str(tmp_path / "d"), "-o",
                           str(tmp_path / "o"), "-q"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    assert (tmp_path / "o" / "pos001.ome.tiff").is_file()


#: Run in a fresh interpreter: main() as a program calls it (no argv), then as a program embedding
#: it does (argv given), then again; prints what the garbage collector holds after each.
_GC_PROBE = """
import gc, json, sys
import pandas
from posdir2ometiff.cli import main
src, out = sys.argv[1:3]
rc_embedded = main([src, "-o", out + "1", "-q"])
frozen_embedded = gc.get_freeze_count()
sys.argv = ["posdir2ometiff", src, "-o", out + "2", "-q"]
rc = main()
frozen = gc.get_freeze_count()
tracked = gc.get_objects()
# Asked once per process: counting the frozen objects walks them all (10 ms per run).
from types import SimpleNamespace
from posdir2ometiff import startup
def asked_again():
    raise AssertionError("the freeze count asked for again")
startup.gc = SimpleNamespace(get_freeze_count=asked_again, freeze=asked_again)
print(json.dumps({"rc": [rc_embedded, rc, main()], "frozen_embedded": frozen_embedded,
                  "frozen": frozen, "tracked": len(tracked),
                  "pandas_tracked": any(o is vars(pandas) for o in tracked),
                  "frozen_again": gc.get_freeze_count()}))
"""


def test_the_command_line_puts_its_imports_out_of_the_garbage_collectors_way(
    demo, tmp_path: Path
) -> None:
    """The console script's process freezes the imports' objects (startup.py): its collections,
    the first of which came during the conversion and the last ones at exit, no longer walk the
    ~100,000 objects of pandas, ome-types and NumPy. A program calling main(argv) is left alone,
    and a second run freezes nothing more."""
    proc = subprocess.run([sys.executable, "-c", _GC_PROBE, str(demo.folder), str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["rc"] == [0, 0, 0]
    assert got["frozen_embedded"] == 0  # main(argv): the embedding program's process
    assert got["frozen"] > 20_000  # the imports
    assert not got["pandas_tracked"]
    assert got["tracked"] < got["frozen"] / 10  # what a full collection still walks
    assert got["frozen_again"] <= got["frozen"]  # once per process


def test_progress_bar_on_a_terminal_and_lines_otherwise(caplog) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    with Progress(10, stream=tty) as p:
        assert p.mode == "bar"
        p.update(4)
        p.update(6)
    assert "10/10" in tty.getvalue() and "plane/s" in tty.getvalue()  # done/total and rate
    assert "\r" in tty.getvalue()  # redrawn in place, not one line per update
    with caplog.at_level(logging.INFO), Progress(10, stream=io.StringIO(), interval=0) as p:
        assert p.mode == "log"
        p.update(5)
    assert "5/10 planes (50%)" in caplog.text and "planes/s" in caplog.text


def test_overwrite_forces_and_verbose_shows_debug_and_tracebacks(
    demo, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    assert main([str(demo.folder), "-o", str(out), "--workers", "1", "-q"]) == 0
    assert main([str(demo.folder), "-o", str(out), "--workers", "1", "--overwrite", "-v"]) == 0
    err = capsys.readouterr().err
    assert "2 converted, 0 up to date" in err
    assert "DEBUG posdir2ometiff" in err or "INFO posdir2ometiff" in err  # -v: logger names
    assert main([str(tmp_path / "nope"), "-o", str(out), "-v"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "not a folder" in err.splitlines()[-1]


def test_other_libraries_speak_from_warning_up_in_one_line_each(
    capsys
) -> None:
    """Dask's ``distributed`` sets its loggers to INFO when imported: the root logger's WARNING
    did not hold them back, and a ``--cluster slurm`` run printed its scheduler's life; a lost
    scheduler printed its client's traceback. Only ``-v`` shows another library's INFO (and
    DEBUG) and tracebacks; our own INFO is shown as before."""
    from posdir2ometiff.logconfig import cli_logging

    chatty = logging.getLogger("distributed.scheduler.test")
    chatty.setLevel(logging.INFO)
    try:
        for verbose in (False, True):
            with cli_logging(verbose, False):
                chatty.info("State start")
                chatty.warning("a worker was lost")
                logging.getLogger("posdir2ometiff.test").info("our own news")
                try:
                    raise OSError("connection refused\nmore detail")
                except OSError:
                    chatty.exception("")
                    chatty.error("reconnecting failed", exc_info=True)
            err = capsys.readouterr().err
            assert ("State start" in err) is verbose
            assert "a worker was lost" in err and "our own news" in err
            # Their errors: one line each, naming them, without the traceback (unless -v).
            assert ("Traceback" in err) is verbose
            if not verbose:
                assert err.splitlines()[-2:] == [
                    "ERROR: distributed.scheduler.test: OSError: connection refused",
                    "ERROR: distributed.scheduler.test: reconnecting failed (OSError: "
                    "connection refused)"]
    finally:
        chatty.setLevel(logging.NOTSET)
