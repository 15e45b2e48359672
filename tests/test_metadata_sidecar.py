"""The YAML sidecar experiment.yml: schema-validated, errors point at the key, fills the model."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import jsonschema
import pytest

from posdir2ometiff.demo import make_demo
from posdir2ometiff.metadata.plugins import MetadataError, load_metadata
from posdir2ometiff.metadata.sidecar import (
    YamlSidecarParser,
    load_schema,
    parse_sidecar,
    schema_path,
)

REPO = Path(__file__).resolve().parents[1]

FULL = """\
name: glucose-pulse
description: Mig1 nuclear localisation after a glucose pulse.
authors: [Ada Lovelace]
strains: [Mig1-GFP]
tags: [yeast, glucose]
key_values:
  Medium: SC + 2% glucose
  Temperature (C): 30
  Strain: [BY4741, BY4742]
acquisition_start: 2018-09-28T17:18:14
microscope: Batgirl
objective: {name: Plan Apo 60x/1.4 Oil, magnification: 60, na: 1.4}
pixel_size_um: 0.182
omero: {project: Morphology, dataset: 2018-09-28 glucose}
z: {count: 5, spacing_um: 0.6}
time: {interval_s: 300, timepoints: 3}
channels:
  - {name: GFP, color: "#00FF00", excitation_wavelength_nm: 488, emission_wavelength_nm: 509}
  - {name: mCherry, color: "#FF0000"}
positions:
  - {name: pos001, x_um: 10.5, y_um: -3, group: 2, exposure_ms: {GFP: 7}}
"""


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "experiment.yml"
    path.write_text(text, encoding="utf-8")
    return path


def test_schema_is_a_valid_json_schema_in_the_repo_schemas_folder() -> None:
    assert schema_path().resolve() == REPO / "schemas" / "experiment.schema.json"
    jsonschema.Draft202012Validator.check_schema(load_schema())
    assert json.loads(schema_path().read_text())["$schema"].endswith("2020-12/schema")


def test_full_sidecar_fills_the_model(tmp_path: Path) -> None:
    m = parse_sidecar(_write(tmp_path, FULL))
    assert m.sources == ["yaml"]
    assert (m.name, m.microscope, m.pixel_size_um) == ("glucose-pulse", "Batgirl", 0.182)
    assert (m.objective, m.objective_magnification, m.objective_na) == (
        "Plan Apo 60x/1.4 Oil",
        60,
        1.4,
    )
    assert (m.omero_project, m.omero_dataset) == ("Morphology", "2018-09-28 glucose")
    assert m.acquisition_start == datetime(2018, 9, 28, 17, 18, 14)
    assert m.tags == ["yeast", "glucose"]
    assert m.key_values == [
        ("Medium", "SC + 2% glucose"),
        ("Temperature (C)", "30"),
        ("Strain", "BY4741"),
        ("Strain", "BY4742"),
    ]
    gfp = m.channel("gfp")
    assert (gfp.color, gfp.excitation_wavelength_nm, gfp.emission_wavelength_nm) == (
        "#00FF00",
        488,
        509,
    )
    assert (m.z.count, m.z.spacing_um, m.time.interval_s, m.time.timepoints) == (5, 0.6, 300, 3)
    assert m.position("pos001").exposure_ms == {"GFP": 7}
    assert m.position("pos001").group == "2"


def test_key_values_as_a_list_of_pairs(tmp_path: Path) -> None:
    m = parse_sidecar(
        _write(tmp_path, "key_values:\n  - {key: A, value: 1.5}\n  - {key: A, value: true}\n")
    )
    assert m.key_values == [("A", "1.5"), ("A", "true")]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "channels:\n  - {name: GFP}\n  - {name: RFP, color: greenish}\n",
            "experiment.yml: channels[1].color: 'greenish' does not match '^#[0-9A-Fa-f]{6}$'",
        ),
        ("pixel_size: 0.1\n", "experiment.yml: pixel_size: unknown key (allowed: "),
        (
            "objective: {na: 3}\n",
            "experiment.yml: objective.na: 3 is greater than the maximum of 1.7",
        ),
        (
            "pixel_size_um: -1\n",
            "experiment.yml: pixel_size_um: -1 is less than or equal to the minimum of 0",
        ),
        (
            "channels:\n  - {color: '#00FF00'}\n",
            "experiment.yml: channels[0]: 'name' is a required property",
        ),
        ("tags: yeast\n", "experiment.yml: tags: 'yeast' is not of type 'array'"),
        ("- just\n- a list\n", "experiment.yml: ['just', 'a list'] is not of type 'object'"),
    ],
)
def test_schema_errors_point_at_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(MetadataError) as exc:
        parse_sidecar(path)
    msg = str(exc.value)
    assert msg.startswith(str(path.parent) + "/")
    assert expected in msg
    assert "\n" not in msg


def test_typo_gets_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(MetadataError, match=r"did you mean 'pixel_size_um'\?"):
        parse_sidecar(_write(tmp_path, "pixel_size: 0.1\n"))


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "name: x\ntags: [a, b\nmicroscope: y\n")
    with pytest.raises(MetadataError, match=r"experiment\.yml:\d: invalid YAML"):
        parse_sidecar(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "experiment.yml"
    path.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(MetadataError, match="experiment.yml: not UTF-8"):
        parse_sidecar(path)


def test_empty_sidecar_is_an_empty_model(tmp_path: Path) -> None:
    m = parse_sidecar(_write(tmp_path, "# nothing yet\n"))
    assert m.sources == ["yaml"] and m.channels == [] and m.pixel_size_um is None


def test_sidecar_alone_is_the_metadata_in_auto(tmp_path: Path) -> None:
    folder = tmp_path / "e"
    _write(folder, FULL)
    assert YamlSidecarParser().detect(folder)
    m = load_metadata(folder)
    assert m.sources == ["yaml"] and m.pixel_size_um == 0.182


def test_yaml_extension_also_found(tmp_path: Path) -> None:
    (tmp_path / "experiment.yaml").write_text("pixel_size_um: 0.5\n")
    assert load_metadata(tmp_path, "yaml").pixel_size_um == 0.5


def test_invalid_sidecar_stops_auto(tmp_path: Path, swainlab_sample: Path) -> None:
    """A broken sidecar is an error, not silently ignored: the user wrote it to be used."""
    import shutil

    folder = tmp_path / "e"
    shutil.copytree(swainlab_sample, folder, ignore=shutil.ignore_patterns("pos*"))
    _write(folder, "channels: [{name: GFP, color: green}]\n")
    with pytest.raises(MetadataError, match=r"channels\[0\]\.color"):
        load_metadata(folder)


def test_a_run_without_a_sidecar_does_not_import_jsonschema(tmp_path: Path) -> None:
    """jsonschema (and attrs, its format checkers) cost 70-160 ms of every run's start: it is
    imported when a sidecar is there to validate, not when the plug-ins are discovered."""
    make_demo(tmp_path / "exp", positions=1, z=1, t=1, size=32, seed=1)
    code = (
        "import sys\n"
        "from posdir2ometiff.cli import main\n"
        "rc = main([sys.argv[1], '-o', sys.argv[2], '-q'])\n"
        "print(rc, 'jsonschema' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "exp"), str(tmp_path / "o")],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["0", "False"]
