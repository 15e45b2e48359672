"""Parser plug-ins: entry-point discovery, ranking, --metadata auto|none|NAME|module:Class, overrides."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import shutil
from pathlib import Path

import pytest

from posdir2ometiff.metadata.model import ExperimentMetadata, TimeSettings, ZSectioning
from posdir2ometiff.metadata.plugins import (
    ENTRY_POINT_GROUP,
    MetadataError,
    MetadataParser,
    available_parsers,
    load_metadata,
)
from posdir2ometiff.metadata.sidecar import YamlSidecarParser
from posdir2ometiff.metadata.swainlab import SwainLabParser
from tests.example_parser import JsonSettingsParser

EXAMPLE = "tests.example_parser:JsonSettingsParser"


def _settings(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "operator": "Ada",
                "pixel_size_um": 0.1,
                "channels": [{"name": "GFP", "exposure_ms": 50}, {"name": "mCherry"}],
            }
        )
    )
    return folder


@pytest.fixture
def fake_entry_point(monkeypatch):
    """Register the README's example parser as an installed plug-in (as bioio's tests do)."""
    real = importlib.metadata.entry_points

    def entry_points(**params):
        eps = list(real(**params))
        if params.get("group") == ENTRY_POINT_GROUP:
            eps.append(
                importlib.metadata.EntryPoint(
                    name="json-settings", value=EXAMPLE, group=ENTRY_POINT_GROUP
                )
            )
        return importlib.metadata.EntryPoints(eps)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_builtin_parsers_are_installed_entry_points() -> None:
    parsers = available_parsers()
    assert parsers["swainlab"] is SwainLabParser
    assert parsers["yaml"] is YamlSidecarParser
    assert isinstance(SwainLabParser(), MetadataParser)
    assert isinstance(YamlSidecarParser(), MetadataParser)
    assert isinstance(JsonSettingsParser(), MetadataParser)  # the README example fits too


def test_builtins_without_installed_entry_points(monkeypatch) -> None:
    """Run from a source tree (package not installed): the shipped parsers are still there."""
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda **_: importlib.metadata.EntryPoints([])
    )
    assert list(available_parsers()) == ["swainlab-log", "swainlab", "yaml"]  # priority first


def test_readme_example_runs_through_module_class(tmp_path: Path) -> None:
    meta = load_metadata(_settings(tmp_path / "e"), EXAMPLE)
    assert [c.name for c in meta.channels] == ["GFP", "mCherry"]
    assert meta.channel("GFP").exposure_ms == 50
    assert meta.pixel_size_um == 0.1
    assert meta.key_values == [("Operator", "Ada")]
    assert meta.sources == ["json-settings"]


def test_fake_entry_point_is_discovered_ranked_and_chosen_by_auto(
    fake_entry_point, tmp_path: Path, swainlab_sample: Path
) -> None:
    parsers = available_parsers()
    assert list(parsers)[0] == "json-settings", "priority 10 ranks it first"
    assert set(parsers) >= {"json-settings", "swainlab", "yaml"}
    # A folder with both the lab's files and settings.json: the higher priority parser wins.
    folder = tmp_path / "both"
    shutil.copytree(swainlab_sample, folder, ignore=shutil.ignore_patterns("pos*"))
    _settings(folder)
    meta = load_metadata(folder, "auto")
    assert meta.sources == ["json-settings"]
    # By name, too.
    assert load_metadata(folder, "swainlab").sources == ["swainlab"]
    assert load_metadata(folder, "json-settings").pixel_size_um == 0.1


def test_auto_picks_swainlab_and_merges_the_sidecar(tmp_path: Path, swainlab_sample: Path) -> None:
    folder = tmp_path / "e"
    shutil.copytree(swainlab_sample, folder, ignore=shutil.ignore_patterns("pos*"))
    (folder / "experiment.yml").write_text(
        "pixel_size_um: 0.182\n"
        "tags: [yeast]\n"
        "channels:\n  - {name: gfp, color: '#00FF00', emission_wavelength_nm: 509}\n"
    )
    meta = load_metadata(folder)
    assert meta.sources == ["swainlab", "yaml"]
    assert meta.pixel_size_um == 0.182
    gfp = meta.channel("GFP")
    assert (gfp.color, gfp.exposure_ms, gfp.emission_wavelength_nm) == ("#00FF00", 60.0, 509)
    assert [c.name for c in meta.channels] == ["Brightfield", "DIC", "GFP"]
    assert meta.tags == ["28-Sep-2018", "Batgirl", "yeast"]


def test_overrides_go_last(swainlab_sample: Path) -> None:
    overrides = ExperimentMetadata(
        pixel_size_um=0.2, z=ZSectioning(spacing_um=1.0), time=TimeSettings(interval_s=60)
    )
    meta = load_metadata(swainlab_sample, "auto", overrides)
    assert (meta.pixel_size_um, meta.z.spacing_um, meta.time.interval_s) == (0.2, 1.0, 60)
    assert (meta.z.count, meta.time.timepoints) == (5, 288), "other settings kept"


def test_overrides_beat_both_the_text_files_and_the_sidecar(
    tmp_path: Path, swainlab_sample: Path
) -> None:
    folder = tmp_path / "e"
    shutil.copytree(swainlab_sample, folder, ignore=shutil.ignore_patterns("pos*"))
    (folder / "experiment.yml").write_text(
        "pixel_size_um: 0.182\nz: {spacing_um: 0.8}\ntime: {interval_s: 120}\n"
    )
    layered = load_metadata(folder)
    assert (layered.pixel_size_um, layered.z.spacing_um, layered.time.interval_s) == (
        0.182, 0.8, 120)  # the sidecar over the Acq file's 0.6 µm and 300 s
    overrides = ExperimentMetadata(
        pixel_size_um=0.2, z=ZSectioning(spacing_um=1.0), time=TimeSettings(interval_s=60)
    )
    meta = load_metadata(folder, "auto", overrides)
    assert meta.sources[:2] == ["swainlab", "yaml"]
    assert (meta.pixel_size_um, meta.z.spacing_um, meta.time.interval_s) == (0.2, 1.0, 60)


def test_none_and_nothing_found(tmp_path: Path, swainlab_sample: Path) -> None:
    assert load_metadata(swainlab_sample, "none") is None
    only = ExperimentMetadata(pixel_size_um=0.3)
    assert load_metadata(swainlab_sample, "none", only).pixel_size_um == 0.3
    assert load_metadata(tmp_path, "auto") is None


def test_comma_list_layers_in_order(tmp_path: Path) -> None:
    folder = _settings(tmp_path / "e")
    (folder / "experiment.yml").write_text("pixel_size_um: 0.5\n")
    assert load_metadata(folder, f"{EXAMPLE},yaml").pixel_size_um == 0.5
    assert load_metadata(folder, f"yaml,{EXAMPLE}").pixel_size_um == 0.1


def test_unknown_name_lists_installed_parsers(tmp_path: Path) -> None:
    with pytest.raises(MetadataError) as exc:
        load_metadata(tmp_path, "zeiss")
    msg = str(exc.value)
    assert "zeiss" in msg and "installed: swainlab-log, swainlab, yaml" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_module_xyz:Parser", "cannot import module 'no_such_module_xyz'"),
        ("tests.example_parser:Nope", "has no attribute 'Nope'"),
        ("json:JSONDecoder", "has no parse"),
    ],
)
def test_bad_module_class(tmp_path: Path, spec: str, match: str) -> None:
    with pytest.raises(MetadataError, match=match):
        load_metadata(tmp_path, spec)


def test_broken_plugin_is_skipped_in_auto_and_explained_by_name(
    monkeypatch, tmp_path: Path, caplog, swainlab_sample: Path
) -> None:
    real = importlib.metadata.entry_points

    def entry_points(**params):
        eps = list(real(**params))
        if params.get("group") == ENTRY_POINT_GROUP:
            eps.append(importlib.metadata.EntryPoint("broken", "no_such_pkg:P", ENTRY_POINT_GROUP))
        return importlib.metadata.EntryPoints(eps)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)
    with caplog.at_level(logging.WARNING):
        assert load_metadata(swainlab_sample).sources == ["swainlab"]
    assert "'broken'" in caplog.text and "could not be loaded" in caplog.text
    with pytest.raises(
        MetadataError, match="--metadata broken: parser plug-in 'no_such_pkg:P' failed"
    ):
        load_metadata(tmp_path, "broken")


class _Misbehaving:
    name = "bad"

    def detect(self, folder: Path) -> bool:
        raise RuntimeError("boom")

    def parse(self, folder: Path):
        return {"not": "a model"}


def test_plugin_returning_the_wrong_type_is_a_metadata_error(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match="returned dict, not ExperimentMetadata"):
        load_metadata(tmp_path, f"{__name__}:_Misbehaving")


def test_parser_error_names_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "e"
    folder.mkdir()
    (folder / "settings.json").write_text("{not json")
    with pytest.raises(MetadataError, match=r"settings\.json: Expecting property name"):
        load_metadata(folder, EXAMPLE)


def test_cli_metadata_option_end_to_end(tmp_path: Path, capsys) -> None:
    """``posdir2ometiff SRC -o OUT --metadata module:Class`` runs the README parser into OME-XML;
    an unknown NAME is a one-line error with exit status 1 listing the installed parsers."""
    import tifffile
    from ome_types import from_xml

    from posdir2ometiff.cli import main
    from posdir2ometiff.demo import make_demo

    src = tmp_path / "exp"
    make_demo(src, positions=1, channels=("GFP", "mCherry"), z=1, t=1, size=64, metadata=False)
    _settings(src)
    out = tmp_path / "out"
    assert main([str(src), "-o", str(out), "--metadata", EXAMPLE, "--workers", "1", "-q"]) == 0
    with tifffile.TiffFile(out / "pos001.ome.tiff") as tif:
        pixels = from_xml(tif.ome_metadata).images[0].pixels
    assert [c.name for c in pixels.channels] == ["GFP", "mCherry"]
    assert pixels.physical_size_x == 0.1
    assert pixels.planes[0].exposure_time == 50

    assert main([str(src), "-o", str(tmp_path / "o2"), "--metadata", "zeiss", "-q"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "installed: swainlab-log, swainlab, yaml" in err[0]
