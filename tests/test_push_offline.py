"""omero_push without a server: planning, config and password handling, dry run, column mapping."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from omero_push import cli
from omero_push.config import Secret, load_config, resolve_settings
from omero_push.errors import ConfigError, InputError
from omero_push.ometiff import images_from_ome, read_ome
from omero_push.plan import build_plan, format_plan
from omero_push.provenance import (
    MARKER_NS,
    PROVENANCE_NS,
    parse_receipt,
    pending_description,
    receipt_pairs,
)
from omero_push.tables import column_specs
from tests.test_push_support import isolate_root_logging, make_converter_output, make_ome_tiff

SENTINEL = "S3ntinel-pa55word-do-not-leak"
_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)


# --- plan ---------------------------------------------------------------------------------------


def test_plan_from_converter_output_uses_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=2)
    plan = build_plan([out], dataset=None)
    assert plan.dataset == "exp1" and plan.project == "PushTests"  # hints from the manifest
    assert [i.position for i in plan.items] == ["pos001", "pos002"]
    assert plan.tags == ["exp-tag", "glucose"]
    assert plan.kv_pairs[:2] == [("Strain", "BY4741"), ("Strain", "Hxt4-GFP")]
    assert plan.description.startswith("Aim: test the push")
    assert [t.names for t in plan.tables] == [("channels", "positions")]
    item = plan.items[0]
    assert item.conversion["options"] == {"tile": 512, "compression": "zlib"}
    assert item.conversion["n_sources"] == 2 * 2 * 3


def test_plan_reads_image_annotations_from_ome_xml(tmp_path: Path) -> None:
    path = tmp_path / "x.ome.tiff"
    make_ome_tiff(path, name="posA", kv=[("k", "v1"), ("k", "v2")], tags=["a", "b"], comment="c1")
    (im,) = images_from_ome(read_ome(path))
    assert im.name == "posA"
    assert im.kv_pairs == (("k", "v1"), ("k", "v2"))  # repeated keys kept, file order
    assert im.tags == ("a", "b") and im.comments == ("c1",)
    assert [c.name for c in im.channels] == ["Brightfield", "GFP"]
    assert im.channels[1].color == (0, 255, 0, 255)
    assert im.sizes == {"X": 50, "Y": 40, "Z": 3, "C": 2, "T": 2}
    assert im.pixel_type == "uint16"


def test_plan_loose_files_hashed_and_deduplicated(tmp_path: Path) -> None:
    a = tmp_path / "a.ome.tiff"
    make_ome_tiff(a)
    b = tmp_path / "copy.ome.tiff"
    b.write_bytes(a.read_bytes())
    plan = build_plan([a, b], dataset="D")
    assert len(plan.items) == 1  # same bytes pushed once
    import hashlib

    assert plan.items[0].sha1 == hashlib.sha1(a.read_bytes()).hexdigest()


def test_plan_rehashes_a_file_changed_after_the_manifest(tmp_path: Path) -> None:
    """Same size but a newer mtime than the manifest records: the file is hashed again."""
    import hashlib
    import json
    import os

    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    man = json.loads((out / "manifest.json").read_text())
    f = out / "pos001.ome.tiff"
    man["positions"]["pos001"]["mtime_ns"] = f.stat().st_mtime_ns
    man["positions"]["pos001"]["sha1"] = "0" * 40  # what the manifest believed
    (out / "manifest.json").write_text(json.dumps(man))
    assert build_plan([out], dataset="D").items[0].sha1 == "0" * 40  # unchanged: trusted
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    assert build_plan([out], dataset="D").items[0].sha1 == hashlib.sha1(f.read_bytes()).hexdigest()


def test_plan_skips_failed_positions(tmp_path: Path) -> None:
    import json

    out = tmp_path / "out"
    make_converter_output(out, positions=2)
    man = json.loads((out / "manifest.json").read_text())
    man["positions"]["pos002"]["status"] = "failed"
    man["positions"]["pos002"]["error"] = "pos002/img_000001.png: truncated"
    (out / "manifest.json").write_text(json.dumps(man))
    plan = build_plan([out], dataset="D")
    assert [i.position for i in plan.items] == ["pos001"]
    assert "truncated" in plan.skipped[0][1]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "no such file or folder"),
        (lambda p: p.mkdir(), "no manifest.json"),
        (lambda p: (p.mkdir(), (p / "manifest.json").write_text("{oops")), "not valid JSON"),
    ],
)
def test_plan_bad_input_is_one_clear_error(tmp_path: Path, make, message: str) -> None:
    p = tmp_path / "thing"
    make(p)
    with pytest.raises(InputError, match=message):
        build_plan([p], dataset="D")


def test_plan_refuses_non_ome_tiff(tmp_path: Path) -> None:
    import tifffile

    p = tmp_path / "plain.tif"
    tifffile.imwrite(p, np.zeros((4, 4), "uint8"))
    with pytest.raises(InputError, match="no OME-XML"):
        build_plan([p], dataset="D")


def test_dry_run_prints_plan_and_needs_no_server(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    # No server, no password: a dry run must still work and touch nothing.
    rc = cli.main([str(out), "--dry-run", "--server", "nowhere.invalid", "--user", "u"])
    text = capsys.readouterr().out
    assert rc == 0
    assert "push plan: 1 file(s), 1 image(s)" in text
    assert "PushTests / exp1" in text
    assert "image 'pos001': X=50 Y=40 Z=3 C=2 T=2 uint16 [Brightfield, GFP]" in text
    assert "tags pushtest, glucose" in text and "tables from" in text
    assert "dry run: nothing was sent" in text


def test_the_command_line_puts_its_imports_out_of_the_garbage_collectors_way(
    tmp_path: Path,
) -> None:
    """``omero-push`` run as the program freezes the imports' objects (posdir2ometiff's
    startup.py; measured 0.8 s less per run, most of it at exit); main(argv) from a program
    leaves its process alone."""
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    code = (
        "import gc, sys\n"
        "from omero_push.cli import main\n"
        "args = [sys.argv[1], '--dry-run', '--server', 'nowhere.invalid', '--user', 'u', '-q']\n"
        "rc = main(args)\n"
        "embedded = gc.get_freeze_count()\n"
        "sys.argv = ['omero-push', *args]\n"
        "rc2 = main()\n"
        "print(rc, rc2, embedded, gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMERO_PASSWORD"}
    proc = subprocess.run([sys.executable, "-c", code, str(out)], capture_output=True, text=True,
                          check=False, env=env)
    assert proc.returncode == 0, proc.stderr
    # The last line: the dry run prints its plan before it.
    rc, rc2, embedded, frozen, tracked = map(int, proc.stdout.splitlines()[-1].split())
    assert (rc, rc2, embedded) == (0, 0, 0)
    assert frozen > 20_000 and tracked < frozen / 10


def test_format_plan_mentions_marker_without_provenance(tmp_path: Path) -> None:
    make_ome_tiff(tmp_path / "a.ome.tiff")
    plan = build_plan([tmp_path / "a.ome.tiff"], dataset="D")
    assert "checksum marker only" in format_plan(plan, "pixels", provenance=False)


# --- provenance ---------------------------------------------------------------------------------


def test_receipt_pairs_with_and_without_provenance(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    plan = build_plan([out], dataset="D")
    item, im = plan.items[0], plan.items[0].images[0]
    ns, pairs = receipt_pairs(item, im, mode="import", provenance=True, tool_version="9.9")
    d = dict(pairs)
    assert ns == PROVENANCE_NS
    assert d["source_sha1"] == item.sha1 and d["tool_version"] == "9.9" and d["mode"] == "import"
    assert d["converter"] == "posdir2ometiff" and '"compression":"zlib"' in d["conversion_options"]
    import datetime

    assert datetime.datetime.fromisoformat(d["pushed_at"]).tzinfo is not None  # the date, in UTC
    assert parse_receipt(pairs) == (item.sha1, 0)
    ns, pairs = receipt_pairs(item, im, mode="import", provenance=False, tool_version="9.9")
    assert ns == MARKER_NS and pairs == [("source_sha1", item.sha1), ("series", "0")]
    assert pending_description("abc", 1) != pending_description("abc")


# --- config and password ------------------------------------------------------------------------


def test_config_accepts_pyomeroupload_keys(tmp_path: Path, caplog) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text(
        "omero_conn:\n  host: omero.example.org\n  port: 4064\n  username: alice\n"
        f"  password: {SENTINEL}\n  group: lab\nother_tool:\n  x: 1\n"
    )
    with caplog.at_level(logging.DEBUG):
        data = load_config(cfg)
    assert (
        data["server"] == "omero.example.org" and data["user"] == "alice" and data["group"] == "lab"
    )
    assert isinstance(data["password"], Secret) and data["password"].reveal() == SENTINEL
    assert "holds a password" in caplog.text and SENTINEL not in caplog.text
    assert SENTINEL not in repr(data) and SENTINEL not in f"{data['password']}"


def test_password_precedence_env_then_config_then_prompt(tmp_path: Path, monkeypatch) -> None:
    cfg = tmp_path / "c.yml"
    cfg.write_text("host: h\nuser: bob\npassword: fromfile\n")
    monkeypatch.setenv("OMERO_PASSWORD", "fromenv")
    s = resolve_settings(server=None, port=None, user=None, group=None, config=cfg)
    # No port given: none (omero-py's default, 4064 or 4063 for tcp://) — issue 9.6.
    assert s.password.reveal() == "fromenv" and s.server == "h" and s.port is None
    monkeypatch.delenv("OMERO_PASSWORD")
    s = resolve_settings(server=None, port=None, user=None, group=None, config=cfg)
    assert s.password.reveal() == "fromfile"
    monkeypatch.setattr("getpass.getpass", lambda prompt: "typed")
    s = resolve_settings(server="h", port=7, user="bob", group=None, interactive=True)
    assert s.password.reveal() == "typed" and s.port == 7
    assert "typed" not in repr(s)


def test_no_password_without_terminal_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    monkeypatch.setattr("getpass.getpass", lambda prompt: pytest.fail("must not prompt"))
    with pytest.raises(ConfigError, match="OMERO_PASSWORD"):
        resolve_settings(server="h", port=None, user="u", group=None, interactive=False)


def test_session_key_needs_no_password_or_user(monkeypatch) -> None:
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    s = resolve_settings(server="h", port=None, user=None, group=None, session_key="abc-123")
    assert s.session_key.reveal() == "abc-123" and s.password is None


def test_cli_has_no_password_option() -> None:
    """The password can never be typed into argv (and so never lands in shell history or ps)."""
    parser = cli.build_parser()
    opts = {o for a in parser._actions for o in a.option_strings}
    assert not any("pass" in o for o in opts)


def test_missing_password_cli_is_one_line_exit_2(tmp_path: Path, capsys, monkeypatch) -> None:
    make_ome_tiff(tmp_path / "a.ome.tiff")
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    rc = cli.main([str(tmp_path / "a.ome.tiff"), "--server", "h", "--user", "u", "--dataset", "D"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err


# --- tables -------------------------------------------------------------------------------------


def test_column_mapping_follows_dtypes() -> None:
    df = pd.DataFrame(
        {
            "n": pd.Series([1, 2], dtype="int64"),
            "x": [0.5, np.nan],
            "ok": [True, False],
            "name": ["GFP", "mCherry-µ"],
            "when": pd.to_datetime(["2026-01-01 10:00", "2026-01-01 10:05"]),
            "maybe": pd.Series([1, None], dtype="Int64"),
        }
    )
    specs = {s.name: s for s in column_specs(df)}
    assert specs["n"].kind == "Long" and specs["n"].values == [1, 2]
    assert specs["x"].kind == "Double" and np.isnan(specs["x"].values[1])
    assert specs["ok"].kind == "Bool" and specs["ok"].values == [True, False]
    assert specs["name"].kind == "String" and specs["name"].size == len("mCherry-µ".encode())
    assert specs["when"].kind == "String" and specs["when"].values[0].startswith("2026-01-01T10:00")
    assert specs["maybe"].kind == "Double"  # missing integers need NaN


# --- retries and progress -----------------------------------------------------------------------


def test_backoff_retries_connection_loss_only() -> None:
    """Connection loss is retried with 1, 2, 4 … s waits (capped); other errors are not retried."""
    Ice = pytest.importorskip("Ice")
    from omero_push.session import with_backoff

    waits: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise Ice.ConnectionLostException()
        return "done"

    assert (
        with_backoff(flaky, retries=5, base_delay_s=1, max_delay_s=3, sleep=waits.append) == "done"
    )
    assert waits == [1, 2, 3]
    with pytest.raises(Ice.ConnectionLostException):
        with_backoff(
            lambda: (_ for _ in ()).throw(Ice.ConnectionLostException()),
            retries=2,
            sleep=waits.append,
        )
    with pytest.raises(ValueError):
        with_backoff(
            lambda: (_ for _ in ()).throw(ValueError("bug")),
            retries=5,
            sleep=lambda s: pytest.fail("retried"),
        )


def test_line_progress_without_terminal(caplog) -> None:
    """Not a terminal: plain lines per image and per 10 % of bytes (readable in CI logs)."""
    import io

    from omero_push.progress import LineProgress, make_progress

    assert isinstance(make_progress(stream=io.StringIO()), LineProgress)
    p = LineProgress()
    with caplog.at_level(logging.INFO, logger="omero_push"):
        p.start(1000, 2)
        for _ in range(10):
            p.advance(100)
        p.image_done("pos001", 7, "created")
    assert "pushing 2 image(s)" in caplog.text
    assert "50% of bytes sent" in caplog.text and "100% of bytes sent" in caplog.text
    assert "[1/2] pos001: image 7 (created)" in caplog.text


def test_tqdm_bars_on_a_terminal() -> None:
    """On a terminal: a bytes bar (with unit B) and an images bar."""
    import io

    from omero_push.progress import TqdmProgress, make_progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Tty()
    p = make_progress(stream=stream)
    assert isinstance(p, TqdmProgress)
    p.start(2048, 1)
    p.advance(2048)
    p.image_done("pos001", 3, "created")
    p.close()
    text = stream.getvalue()
    assert "2.00k/2.00k" in text and "B/s" in text  # bytes, with a rate
    assert "images" in text and "1/1" in text and "pos001: created" in text


def test_progress_rewinds_the_bytes_of_a_failed_upload() -> None:
    """A failed upload takes its bytes back off the bar (the retry sends them again); a successful
    one keeps them."""
    from omero_push.push import _bytes_counted

    class Tally:
        def __init__(self) -> None:
            self.done = 0

        def advance(self, n: int) -> None:
            self.done += n

        def rewind(self, n: int) -> None:
            self.done -= n

    bar = Tally()
    with _bytes_counted(bar) as on_bytes:  # type: ignore[arg-type]
        on_bytes(10)
    with pytest.raises(ConnectionError), _bytes_counted(bar) as on_bytes:  # type: ignore[arg-type]
        on_bytes(3)
        on_bytes(4)
        assert bar.done == 17
        raise ConnectionError("dropped")
    assert bar.done == 10


class _Call:
    """An AMI call's stand-in: ``end`` answers, or raises what the server (or Ice) said."""

    def __init__(self, outcome: Exception | None) -> None:
        self.outcome = outcome

    @staticmethod
    def end(call: _Call) -> None:
        if call.outcome is not None:
            raise call.outcome


def test_a_lost_connection_is_the_error_a_window_of_writes_raises() -> None:
    """When the server drops a session, writes it already took in are answered by a service
    closed under them; that answer can come first. The window raises the lost connection (the
    cause: the push retries it and tells the user to re-run), not the server's answer."""
    pytest.importorskip("omero")
    import Ice
    import omero
    import omero.clients  # noqa: F401 - defines omero's exception classes

    from omero_push.session import AsyncWindow, is_connection_lost

    closed = omero.ApiUsageException(None, None, "pixel buffer /x is closed")
    lost = Ice.ConnectionLostException()
    window = AsyncWindow(3)
    for outcome in (None, closed, lost):
        window.call(_Call, _Call.end, outcome)  # the third call waits for the first: fine
    with pytest.raises(Exception) as got:
        window.call(_Call, _Call.end, None)  # waits for the second: the closed service
    assert got.value is lost and is_connection_lost(got.value)

    window = AsyncWindow(4)  # the same at the end, in drain()
    for outcome in (closed, None, lost):
        window.call(_Call, _Call.end, outcome)
    with pytest.raises(Exception) as got:
        window.drain()
    assert got.value is lost

    window = AsyncWindow(4)  # no lost connection: the first error, as before
    other = omero.ApiUsageException(None, None, "another")
    for outcome in (closed, other):
        window.call(_Call, _Call.end, outcome)
    with pytest.raises(Exception) as got:
        window.drain()
    assert got.value is closed
