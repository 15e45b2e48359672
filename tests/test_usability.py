"""What a new user trips on (issue 13, point 4): option names, help texts, hints, exit statuses,
and the compose file's OMERO service."""

from __future__ import annotations

import argparse
import builtins
import logging
from pathlib import Path

import pytest
import yaml

from omero_push import cli as push_cli
from posdir2ometiff import cli
from posdir2ometiff.demo import make_demo
from posdir2ometiff.layout import DEFAULT_PATTERN
from tests.test_push_support import make_converter_output

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _restore_logging():
    """The CLIs configure the root logger; put it back for other tests' caplog."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {o: a for a in parser._actions for o in a.option_strings}


def test_demo_count_and_converter_glob_have_different_names(tmp_path: Path, capsys) -> None:
    demo = _options(cli.build_demo_parser())
    assert demo["--num-positions"].type("3") == 3  # a count (range-checked), not a glob
    assert cli.build_parser()._option_string_actions["--positions"].metavar == "GLOB"
    assert cli.main(["demo", str(tmp_path / "d"), "--num-positions", "3", "-z", "1", "-t", "1",
                     "--size", "16", "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "d").glob("pos*")) == ["pos001", "pos002", "pos003"]
    # the old spelling says which option is meant
    with pytest.raises(SystemExit) as exc:
        cli.main(["demo", str(tmp_path / "e"), "--positions", "2"])
    assert exc.value.code == 2
    assert "--num-positions N" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()


def test_demo_help_shows_defaults_and_helps_every_option() -> None:
    parser = cli.build_demo_parser()
    text = parser.format_help()
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{action.dest} has no help"
        if action.default not in (None, False):
            assert f"(default: {action.default})" in " ".join(text.split()), action.dest


def test_top_level_usage_names_the_demo_and_pattern_help_shows_the_regex() -> None:
    parser = cli.build_parser()
    assert "posdir2ometiff demo OUT_DIR" in parser.format_usage()
    help_text = parser.format_help()
    assert DEFAULT_PATTERN in "".join(help_text.split())  # argparse may wrap before it


def test_a_position_folder_as_src_suggests_its_parent(tmp_path: Path, capsys) -> None:
    spec = make_demo(tmp_path / "exp", positions=1, z=1, t=1, size=16)
    pos = spec.folder / "pos001"
    assert cli.main([str(pos), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the "no metadata" warning
    assert err.startswith("posdir2ometiff: error:")
    assert "no position folder matches 'pos*'" in err
    assert "looks like a position folder" in err and err.endswith(str(spec.folder.resolve()))
    # an empty folder gets no such hint
    (tmp_path / "empty").mkdir()
    assert cli.main([str(tmp_path / "empty"), "-o", str(tmp_path / "out")]) == 1
    assert "looks like a position folder" not in capsys.readouterr().err


def test_omero_push_tile_is_a_number_like_the_converter_and_port_project_differ() -> None:
    opts = _options(push_cli.build_parser())
    assert opts["--tile"].metavar == cli.build_parser()._option_string_actions["--tile"].metavar
    assert opts["--tile"].type("512") == (512, 512)
    assert opts["--tile"].type("1024x512") == (1024, 512)
    assert "-p" in opts and opts["-p"].dest == "port"
    assert "-P" not in opts and opts["--project"].dest == "project"
    assert "metadata" in opts["--project"].help and "created" in opts["--project"].help


def test_dry_run_says_where_the_project_comes_from(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    monkeypatch.delenv("OMERO_PASSWORD", raising=False)
    assert push_cli.main([str(out), "--dry-run", "--server", "h", "--user", "u"]) == 0
    text = capsys.readouterr().out
    assert "project 'PushTests': from the experiment's metadata" in text
    assert push_cli.main([str(out), "--dry-run", "--server", "h", "--user", "u",
                          "--project", "Mine"]) == 0
    assert "from the experiment's metadata" not in capsys.readouterr().out


def test_missing_omero_client_has_its_own_exit_status(tmp_path: Path, capsys, monkeypatch) -> None:
    out = tmp_path / "out"
    make_converter_output(out, positions=1)
    real_import = builtins.__import__

    def no_omero(name, *args, **kwargs):
        if name.split(".")[0] in ("omero", "Ice", "Glacier2"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_omero)
    monkeypatch.setenv("OMERO_PASSWORD", "not-used")
    rc = push_cli.main([str(out), "--server", "h", "--user", "u", "--dataset", "D"])
    err = capsys.readouterr().err
    assert rc == 8 and rc != 1
    assert "zeroc-ice is not installed" in err and err.count("\n") == 1
    assert "not-used" not in err


def test_compose_sets_omero_nofile_ulimits_and_readme_waits_with_login_retry() -> None:
    compose = yaml.safe_load((REPO / "docker" / "docker-compose.yml").read_text())
    nofile = compose["services"]["omeroserver"]["ulimits"]["nofile"]
    assert nofile == {"soft": 8192, "hard": 65536}  # as ome/docker-example-omero
    readme = (REPO / "docker" / "README.md").read_text()
    assert "login" in readme and "--retry" in readme
    assert "logs -f" not in readme
