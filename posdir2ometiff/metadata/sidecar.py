"""The YAML sidecar ``experiment.yml``: metadata the acquisition software never records, or all of it.

A user drops ``experiment.yml`` next to the ``pos*`` folders to add what the lab's text files lack
(pixel size, objective, channel colours and wavelengths, project/dataset, tags, key-value pairs), or
to describe an experiment that has no such files at all. It is validated against
``schemas/experiment.schema.json`` (JSON Schema, so editors can complete and check it too), and the
first error names the file and the offending key, e.g.
``experiment.yml: channels[1].color: 'greenish' does not match '^#[0-9A-Fa-f]{6}$'``.

In ``--metadata auto`` the sidecar is a *supplement*: it is merged on top of the main parser's
result (channels and positions by name, field by field), and the CLI options go on top of both.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import logging
import math
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from posdir2ometiff.metadata.model import (
    Channel,
    ExperimentMetadata,
    StagePosition,
    TimeSettings,
    ZSectioning,
)
from posdir2ometiff.metadata.plugins import MetadataError

log = logging.getLogger(__name__)

SIDECAR_NAMES = ("experiment.yml", "experiment.yaml")
SCHEMA_NAME = "experiment.schema.json"


def schema_path() -> Path:
    """The JSON Schema file. ``posdir2ometiff/schemas`` links to the repository's top-level
    ``schemas/`` folder (one copy, which the README links for editors), and wheels carry the files."""
    path = Path(__file__).resolve().parents[1] / "schemas" / SCHEMA_NAME
    if not path.is_file():
        raise MetadataError(f"{path}: schema not found (is the install complete?)")
    return path


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    return json.loads(schema_path().read_text(encoding="utf-8"))


def find_sidecar(folder: Path) -> Path | None:
    for name in SIDECAR_NAMES:
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


def _json_path(parts) -> str:
    """``['channels', 1, 'color']`` -> ``channels[1].color`` (how a user finds it in the file)."""
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _plain(value: Any) -> Any:
    """YAML reads ``2018-09-28`` as a date; the schema speaks JSON, so give it back as ISO text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def validate(data: Any, path: Path) -> None:
    """Raise MetadataError naming the file and the key of the most relevant schema violation."""
    # Imported here, for an experiment that has a sidecar: jsonschema (with attrs and its format
    # checkers) took 70-160 ms of every run's start, most of which have none.
    import jsonschema
    import jsonschema.exceptions

    validator = jsonschema.Draft202012Validator(load_schema())
    errors = list(validator.iter_errors(data))
    if not errors:
        return
    err = jsonschema.exceptions.best_match(errors)
    parts = list(err.absolute_path)
    message = err.message
    if err.validator == "additionalProperties" and isinstance(err.instance, dict):
        # Point at the unknown key itself and suggest the closest allowed one (typos are the
        # usual cause: "pixel_size" for "pixel_size_um").
        allowed = list(err.schema.get("properties", {}))
        unknown = [k for k in err.instance if k not in allowed]
        if unknown:
            parts.append(unknown[0])
            close = difflib.get_close_matches(unknown[0], allowed, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            message = f"unknown key (allowed: {', '.join(allowed)}){hint}"
    where = _json_path(parts)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    raise MetadataError(f"{path}: {where + ': ' if where else ''}{message}{more}")


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return f"{v:g}"
    return str(v)


def _key_values(spec: Any) -> list[tuple[str, str]]:
    if isinstance(spec, dict):
        pairs: list[tuple[str, str]] = []
        for k, v in spec.items():
            pairs += [(k, _text(x)) for x in v] if isinstance(v, list) else [(k, _text(v))]
        return pairs
    return [(item["key"], _text(item["value"])) for item in spec or []]


def _as_text(item: dict[str, Any], key: str) -> dict[str, Any]:
    """The model keeps codes such as a camera mode or a position group as text (``2`` -> "2")."""
    return {**item, key: _text(item[key])} if key in item else item


#: A sidecar is a few KB of hand-written text; anything this big is not one.
MAX_SIDECAR_BYTES = 4 * 1024 * 1024
#: Nodes of the document with every alias expanded. A real sidecar has a few hundred; the
#: "billion laughs" alias bomb (nine levels of nine aliases) has 10**9.
MAX_EXPANDED_NODES = 100_000


class _TooLarge(Exception):
    """The YAML document would expand beyond :data:`MAX_EXPANDED_NODES` (an alias bomb)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the document's nodes *with aliases expanded* before
    constructing it, and refuses an alias bomb in time linear in the file's size.

    PyYAML itself shares an aliased node (``*a`` is the same object as ``&a``), so loading is
    cheap; the blow-up comes when the data is walked (schema validation, copying), which is why
    the count is taken on the composed node graph (PyYAML ``composer.py``: ``compose_node``
    returns ``self.anchors[anchor]`` for an alias) before anything walks it.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        _expanded_size(node, {}, set())
        return super().construct_document(node)


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise _TooLarge("an alias refers to itself (a recursive structure); refused")
    active.add(key)
    if isinstance(node, yaml.MappingNode):
        children = [n for pair in node.value for n in pair]
    elif isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    else:
        children = []
    size = 1 + sum(_expanded_size(child, memo, active) for child in children)
    active.discard(key)
    if size > MAX_EXPANDED_NODES:
        raise _TooLarge(
            f"expands to more than {MAX_EXPANDED_NODES} values through its aliases "
            "(an alias bomb?); refused"
        )
    memo[key] = size
    return size


def _refuse_non_finite(data: Any, path: Path, where: tuple = ()) -> None:
    """YAML has ``.inf`` and ``.nan``; no size, interval or wavelength can be either."""
    if isinstance(data, float) and not math.isfinite(data):
        raise MetadataError(f"{path}: {_json_path(where)}: {data} is not a finite number")
    if isinstance(data, dict):
        for k, v in data.items():
            _refuse_non_finite(v, path, (*where, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            _refuse_non_finite(v, path, (*where, i))


def _iso_datetime(text: str, path: Path) -> dt.datetime:
    """``acquisition_start`` passes the schema's pattern but may still be impossible
    (2018-02-30, hour 25)."""
    try:
        return dt.datetime.fromisoformat(text)
    except ValueError as exc:
        raise MetadataError(f"{path}: acquisition_start: {text!r} is not a date ({exc})") from None


def parse_sidecar(path: Path) -> ExperimentMetadata:
    """Read and validate one sidecar file into the model."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise MetadataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_SIDECAR_BYTES:
        raise MetadataError(
            f"{path}: {len(raw)} bytes; a sidecar is at most {MAX_SIDECAR_BYTES} bytes"
        )
    try:
        data = yaml.load(raw.decode("utf-8"), Loader=_BoundedLoader)  # a SafeLoader subclass
    except UnicodeDecodeError as exc:
        raise MetadataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise MetadataError(f"{path}{where}: invalid YAML: {problem}") from exc
    except _TooLarge as exc:
        raise MetadataError(f"{path}: {exc}") from None
    except RecursionError:
        raise MetadataError(f"{path}: nested too deeply to be an experiment description") from None
    except ValueError as exc:  # an impossible date such as 2018-02-30 (YAML's timestamp type)
        raise MetadataError(f"{path}: invalid value: {exc}") from None
    if data is None:
        data = {}
    data = _plain(data)
    _refuse_non_finite(data, path)
    validate(data, path)

    obj = data.get("objective", {})
    omero = data.get("omero", {})
    z = data.get("z")
    time = data.get("time")
    start = data.get("acquisition_start")
    return ExperimentMetadata(
        sources=["yaml"],
        name=data.get("name"),
        description=data.get("description"),
        aim=data.get("aim"),
        authors=list(data.get("authors", [])),
        strains=list(data.get("strains", [])),
        comments=data.get("comments"),
        tags=list(data.get("tags", [])),
        key_values=_key_values(data.get("key_values")),
        channels=[Channel(**_as_text(c, "camera_mode")) for c in data.get("channels", [])],
        z=ZSectioning(**{**z, **({"count": int(z["count"])} if "count" in z else {})})
        if z
        else None,
        time=TimeSettings(
            **{**time, **({"timepoints": int(time["timepoints"])} if "timepoints" in time else {})}
        )
        if time
        else None,
        positions=[StagePosition(**_as_text(p, "group")) for p in data.get("positions", [])],
        acquisition_start=_iso_datetime(start, path) if start else None,
        microscope=data.get("microscope"),
        objective=obj.get("name"),
        objective_magnification=obj.get("magnification"),
        objective_na=obj.get("na"),
        pixel_size_um=data.get("pixel_size_um"),
        omero_project=omero.get("project"),
        omero_dataset=omero.get("dataset"),
    )


class YamlSidecarParser:
    """``experiment.yml`` (or ``.yaml``) in the experiment folder; merged on top in ``auto``."""

    name = "yaml"
    priority = 0
    supplement = True

    def detect(self, folder: Path) -> bool:
        return find_sidecar(Path(folder)) is not None

    def parse(self, folder: Path) -> ExperimentMetadata:
        path = find_sidecar(Path(folder))
        if path is None:
            raise MetadataError(f"{folder}: no {' or '.join(SIDECAR_NAMES)} found")
        return parse_sidecar(path)


__all__ = ["YamlSidecarParser", "find_sidecar", "load_schema", "parse_sidecar", "schema_path"]
