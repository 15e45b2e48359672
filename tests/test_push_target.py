"""omero import's target flags and omero-push's output, without a server (issue 12, points 2-3)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from omero_push import cli
from omero_push.config import resolve_settings
from omero_push.errors import ConfigError, InputError
from omero_push.plan import (
    ContainerRef,
    ImageOverrides,
    Target,
    build_plan,
    parse_target,
    target_from_options,
)
from omero_push.progress import format_bytes
from tests.test_push_support import isolate_root_logging, make_converter_output, make_ome_tiff

_clean_logging = pytest.fixture(autouse=True)(isolate_root_logging)


# --- -d / -T / -P: omero import's meanings --------------------------------------------------------


def test_dataset_option_number_is_an_id_anything_else_a_name() -> None:
    """`-d 1234` is Dataset ID 1234 as in `omero import -d 1234`; a name stays a name (existing
    scripts keep working), `Dataset:ID` keeps working, and a numeric *name* goes through -T."""
    assert target_from_options("1234") == Target(ContainerRef("Dataset", id=1234))
    assert target_from_options(1234) == Target(ContainerRef("Dataset", id=1234))
    assert target_from_options("exp42") == Target(ContainerRef("Dataset", name="exp42"))
    assert target_from_options("Dataset:77") == Target(ContainerRef("Dataset", id=77))
    numeric_name = target_from_options(None, target="Dataset:name:2024")
    assert numeric_name == Target(ContainerRef("Dataset", name="2024"))
    assert target_from_options(None) is None  # the manifest's hint decides later
    assert target_from_options("exp42", "Screens") == Target(
        ContainerRef("Dataset", name="exp42"), ContainerRef("Project", name="Screens")
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("Dataset:id:2", Target(ContainerRef("Dataset", id=2))),
        ("Dataset:2", Target(ContainerRef("Dataset", id=2))),  # import's default discriminator
        ("Dataset:name:Sample01", Target(ContainerRef("Dataset", name="Sample01"))),
        ("Dataset:+name:S", Target(ContainerRef("Dataset", name="S", pick="+"))),
        ("Dataset:-name:S", Target(ContainerRef("Dataset", name="S", pick="-"))),
        ("Dataset:%name:S", Target(ContainerRef("Dataset", name="S", pick="%"))),
        ("Dataset:@name:S", Target(ContainerRef("Dataset", name="S", pick="@"))),
        ("Dataset:name:a:b c", Target(ContainerRef("Dataset", name="a:b c"))),  # more colons: name
        (
            "Project:name:P/Dataset:name:D",
            Target(ContainerRef("Dataset", name="D"), ContainerRef("Project", name="P")),
        ),
        (
            "Project:id:5/Dataset:@name:D",
            Target(ContainerRef("Dataset", name="D", pick="@"), ContainerRef("Project", id=5)),
        ),
    ],
)
def test_target_templates_as_omero_import(spec: str, expected: Target) -> None:
    """-T takes import's `<Class>[:<discriminator>]:<pattern>` with the + - % @ qualifiers."""
    assert parse_target(spec) == expected
    assert parse_target(expected.describe()) == expected  # what --dry-run shows parses back


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("Screen:name:S", "puts images into datasets"),
        ("regex:^.*/(?<Container1>.*?)", "puts images into datasets"),
        ("Dataset:id:abc", "needs a number"),
        ("Dataset:colour:red", "unknown discriminator"),
        ("Project:name:P", "needs /Dataset:"),
        ("Dataset", "expected Dataset:name:NAME"),
        ("Dataset:name:", "needs a name"),
    ],
)
def test_bad_target_is_one_line(spec: str, message: str) -> None:
    with pytest.raises(InputError, match=message) as err:
        parse_target(spec)
    assert "\n" not in str(err.value) and spec in str(err.value)


def test_dataset_and_target_together_are_refused() -> None:
    with pytest.raises(InputError, match="not both"):
        target_from_options("exp", target="Dataset:id:3")
    with pytest.raises(InputError, match="drop --project"):
        target_from_options(None, "P", "Project:name:Q/Dataset:name:D")


def test_plan_target_defaults_to_the_manifest_hint_even_when_numeric(tmp_path: Path) -> None:
    """Omitting the target keeps today's default from the manifest (a name, with its project)."""
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    plan = build_plan([out], dataset=None)
    assert plan.target == Target(
        ContainerRef("Dataset", name="exp1"), ContainerRef("Project", name="PushTests")
    )
    by_id = build_plan([out], dataset="1234")
    assert by_id.target == Target(ContainerRef("Dataset", id=1234))  # no project for an id
    assert by_id.dataset == "Dataset:1234"


# --- -n / -x / --annotation-* / --tag / --kv ------------------------------------------------------


def test_image_overrides_reach_every_image(tmp_path: Path) -> None:
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f, name="posA", kv=[("k", "v")], tags=["old"])
    over = ImageOverrides(
        name="renamed",
        description="by hand",
        tags=("new", "old"),
        kv_pairs=(("Medium", "SC"), ("k", "v")),
        comments=("plain",),
        ns_comments=(("lab/ns", "noted"),),
    )
    (im,) = build_plan([f], dataset="D", overrides=over).items[0].images
    assert (im.name, im.description) == ("renamed", "by hand")
    assert im.tags == ("old", "new")  # no duplicate
    assert im.kv_pairs == (("k", "v"),)  # the file's own pairs stay one MapAnnotation
    assert im.extra_kv_pairs == (("Medium", "SC"), ("k", "v"))
    assert "plain" in im.comments and im.ns_comments == (("lab/ns", "noted"),)


def test_cli_dry_run_shows_resolved_target_and_overrides(tmp_path: Path, capsys) -> None:
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f, name="posA", comment=None)
    argv = [str(f), "--dry-run", "-d", "1234", "-n", "renamed", "--tag", "t1", "--tag", "t2"]
    argv += ["--kv", "Medium=SC=2%", "--annotation-ns", "lab/ns", "--annotation-text", "hello"]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "-> Dataset:1234 [Dataset:id:1234] (mode import)" in out
    assert "image 'renamed'" in out and ", t1, t2;" in out and "1 comment(s)" in out
    assert cli.main([str(f), "--dry-run", "-T", "Project:name:P/Dataset:@name:D"]) == 0
    out = capsys.readouterr().out
    assert "-> P / D [Project:name:P/Dataset:@name:D]" in out
    assert "from the experiment's metadata" not in out  # the project came from -T


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--kv", "novalue"], "--kv 'novalue': expected KEY=VALUE"),
        (["--annotation-ns", "x"], "--annotation-ns without an --annotation-text"),
        (["-T", "Screen:name:S"], "puts images into datasets"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f)
    assert cli.main([str(f), "--dry-run", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omero-push: error: ") and message in lines[0]


# --- output ---------------------------------------------------------------------------------------


def test_output_json_of_a_dry_run_parses(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=2)
    assert cli.main([str(out), "--dry-run", "--output", "json", "-d", "7"]) == 0
    doc = json.loads(capsys.readouterr().out)  # nothing but the document on stdout
    assert doc["status"] == "dry-run" and doc["target"] == "Dataset:id:7"
    assert doc["counts"]["files"] == 2 and doc["counts"]["images"] == 2
    assert isinstance(doc["counts"]["bytes"], int) and doc["images"] == []


def test_output_json_of_an_error(tmp_path: Path, capsys) -> None:
    assert cli.main([str(tmp_path / "nope"), "--dry-run", "--output", "json", "-d", "x"]) == 2
    cap = capsys.readouterr()
    doc = json.loads(cap.out)
    assert doc["status"] == "error" and doc["exit_code"] == 2 and "no such file" in doc["error"]


def test_log_file_keeps_debug_lines_stderr_keeps_its_level(tmp_path: Path, capsys) -> None:
    f = tmp_path / "a.ome.tiff"
    make_ome_tiff(f)
    log_file = tmp_path / "push.log"
    assert cli.main([str(f), "--dry-run", "-d", "D", "--log-file", str(log_file)]) == 0
    logging.getLogger("omero_push.plan").debug("a debug line")  # after the run: not logged
    text = log_file.read_text()
    assert "DEBUG MainThread omero_push.cli: omero-push " in text and "omero-py" in text
    assert "omero-push " not in capsys.readouterr().err  # the terminal stays at INFO
    assert "a debug line" not in text
    assert cli.main([str(f), "--dry-run", "-d", "D", "--log-file", str(tmp_path / "no/dir/x")]) == 2
    assert "cannot write the log file" in capsys.readouterr().err


def test_sizes_in_one_unit() -> None:
    assert [format_bytes(n) for n in (5, 1536, 3 * 2**20, 5 * 2**30)] == [
        "5 B",
        "1.5 KiB",
        "3.0 MiB",
        "5.0 GiB",
    ]


# --- connection defaults (issue 9.6) --------------------------------------------------------------


def test_port_only_when_given(monkeypatch, tmp_path: Path) -> None:
    """No port given: none is passed, so omero-py picks 4064 (SSL) or 4063 for tcp://host."""
    monkeypatch.setenv("OMERO_PASSWORD", "pw")
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    s = resolve_settings(server="omero.example.org", port=None, user="u", group=None)
    assert s.port is None and s.describe() == "u@omero.example.org"
    s = resolve_settings(server="tcp://h", port=4063, user="u", group=None)
    assert s.port == 4063 and s.describe() == "u@tcp://h:4063"


def test_no_password_message_names_omero_login(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    monkeypatch.setenv("OMERO_SESSIONDIR", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match="run 'omero login'"):
        resolve_settings(server="h", port=None, user="u", group=None, interactive=False)


def test_connect_passes_a_port_only_when_given(monkeypatch) -> None:
    """omero.client gets no port unless the user gave one (its own default then applies)."""
    pytest.importorskip("omero")
    import omero
    import omero.clients  # noqa: F401

    from omero_push.config import ConnectionSettings, Secret
    from omero_push.session import connect

    seen: list[dict] = []

    class Stop(Exception):
        pass

    def fake_client(**kw):
        seen.append(kw)
        raise Stop

    monkeypatch.setattr(omero, "client", fake_client)
    for port in (None, 4063):
        with pytest.raises(Stop):
            connect(ConnectionSettings("h", port, "u", password=Secret("pw")))
    assert "port" not in seen[0] and seen[1]["port"] == 4063
