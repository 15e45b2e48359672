"""Metadata parser plug-ins: discovery through entry points, and choosing which ones read a folder.

A parser is any class with a ``name``, a cheap ``detect(folder)`` and a ``parse(folder)`` returning an
:class:`~posdir2ometiff.metadata.model.ExperimentMetadata`. Parsers are registered in the entry-point
group ``posdir2ometiff.parsers`` (as bioio registers its readers), so a lab adds its own format by
installing a package, without touching this one::

    [project.entry-points."posdir2ometiff.parsers"]
    mylab = "mylab_parser:MyLabParser"

Two optional class attributes steer ``auto``:

- ``priority`` (int, default 0): higher is tried first, so a specific parser can win over a generic
  one that also recognises the folder; ties are broken by name, so the choice is reproducible.
- ``supplement`` (bool, default False): a supplement (the YAML sidecar) does not compete to be *the*
  parser of a folder; every supplement that detects its file is merged on top of the main result.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import logging
from pathlib import Path
from typing import Protocol, runtime_checkable

from posdir2ometiff.metadata.model import ExperimentMetadata, merge

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "posdir2ometiff.parsers"

#: The parsers this package ships, also registered as entry points in pyproject.toml. Used when
#: the package runs from a source tree without being installed (no entry points then), so that
#: ``auto`` does not silently find nothing.
BUILTIN_PARSERS = {
    "swainlab": "posdir2ometiff.metadata.swainlab:SwainLabParser",
    "swainlab-log": "posdir2ometiff.metadata.swainlab.single_log:SwainLabLogParser",
    "yaml": "posdir2ometiff.metadata.sidecar:YamlSidecarParser",
}


class MetadataError(ValueError):
    """Metadata that cannot be used; the message is one line naming the file (key / line) and the fault.

    Parsers raise it for input they cannot read at all; the CLI prints it and exits non-zero. A merely
    malformed line is not an error: parsers log a warning with ``file:line`` and carry on.
    """


@runtime_checkable
class MetadataParser(Protocol):
    """What a metadata plug-in provides. Instances are created without arguments."""

    name: str

    def detect(self, folder: Path) -> bool:
        """Cheaply tell whether ``folder`` looks like this parser's format (no full parse)."""
        ...

    def parse(self, folder: Path) -> ExperimentMetadata:
        """Read the folder's metadata; raise :class:`MetadataError` if it cannot be read at all."""
        ...


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    # Looked up through the module attribute on every call so tests can monkeypatch
    # importlib.metadata.entry_points to register fake plug-ins (as bioio's tests do).
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    names = {ep.name for ep in eps}
    eps += [
        importlib.metadata.EntryPoint(name=name, value=value, group=ENTRY_POINT_GROUP)
        for name, value in BUILTIN_PARSERS.items()
        if name not in names
    ]
    return eps


def available_parsers() -> dict[str, type]:
    """Installed parser classes by entry-point name, ranked (highest ``priority`` first, then name).

    A plug-in that fails to import is logged and left out, so one broken package does not stop
    conversion with the others; asking for it by name reports the import error.
    """
    found: dict[str, type] = {}
    for ep in _entry_points():
        if ep.name in found:
            continue  # first registration wins, like importlib's own de-duplication
        try:
            found[ep.name] = ep.load()
        except Exception as exc:  # noqa: BLE001 - a third-party import can fail in any way
            log.warning("metadata parser %r (%s) could not be loaded: %s", ep.name, ep.value, exc)
    return dict(sorted(found.items(), key=lambda kv: (-_priority(kv[1]), kv[0])))


def _priority(cls: type) -> int:
    return int(getattr(cls, "priority", 0))


def _is_supplement(cls: type) -> bool:
    return bool(getattr(cls, "supplement", False))


def _class_from_spec(spec: str) -> type:
    """Resolve ``module:Class`` (a parser that is not installed as a plug-in)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MetadataError(
            f"--metadata {spec}: cannot import module {module_name!r}: {exc}"
        ) from exc
    obj = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise MetadataError(
                f"--metadata {spec}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(getattr(obj, "parse", None)):
        raise MetadataError(f"--metadata {spec}: {attr!r} has no parse(folder) method")
    return obj


def _class_by_name(name: str, installed: dict[str, type]) -> type:
    if name in installed:
        return installed[name]
    for ep in _entry_points():  # registered but failed to load: say why
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:  # noqa: BLE001
                raise MetadataError(
                    f"--metadata {name}: parser plug-in {ep.value!r} failed to load: {exc}"
                ) from exc
    names = ", ".join(installed) or "(none)"
    raise MetadataError(
        f"--metadata {name}: no such metadata parser; installed: {names}; "
        "or give module:Class, 'auto' or 'none'"
    )


def _run(cls: type, folder: Path) -> ExperimentMetadata:
    """Instantiate and run one parser; a plug-in's unexpected exception becomes a MetadataError."""
    parser = cls()
    name = getattr(parser, "name", cls.__name__)
    try:
        meta = parser.parse(folder)
    except MetadataError:
        raise
    except OSError as exc:
        raise MetadataError(f"{folder}: metadata parser {name!r} could not read: {exc}") from exc
    if not isinstance(meta, ExperimentMetadata):
        raise MetadataError(
            f"{folder}: metadata parser {name!r} returned {type(meta).__name__}, "
            "not ExperimentMetadata"
        )
    if name not in meta.sources:
        meta.sources.append(name)
    return meta


def _detects(cls: type, folder: Path) -> bool:
    try:
        return bool(cls().detect(folder))
    except Exception as exc:  # noqa: BLE001 - a broken detect() must not stop the others
        log.warning(
            "metadata parser %r: detect(%s) failed: %s", getattr(cls, "name", cls), folder, exc
        )
        return False


def load_metadata(
    folder: Path,
    spec: str = "auto",
    overrides: ExperimentMetadata | None = None,
) -> ExperimentMetadata | None:
    """Read an experiment folder's metadata as chosen by ``--metadata``, then apply ``overrides``.

    ``spec`` is one of:

    - ``"auto"``: the first ranked main parser whose ``detect()`` is true, then every supplement
      (the YAML sidecar ``experiment.yml``) that detects its file, merged on top;
    - ``"none"``: read nothing;
    - a registered parser NAME, or ``module:Class``; several may be joined with commas
      (``"swainlab,yaml"``) and are merged in that order (later wins).

    ``overrides`` (the CLI's ``--pixel-size`` and friends) are merged last. Returns None when no
    parser found anything and there are no overrides: the caller decides how loudly to warn.
    Raises :class:`MetadataError` for an unknown parser or unreadable metadata.
    """
    folder = Path(folder)
    spec = (spec or "auto").strip()
    layers: list[ExperimentMetadata] = []
    if spec == "auto":
        installed = available_parsers()
        main = next(
            (c for c in installed.values() if not _is_supplement(c) and _detects(c, folder)), None
        )
        if main is not None:
            layers.append(_run(main, folder))
        for cls in installed.values():
            if _is_supplement(cls) and _detects(cls, folder):
                layers.append(_run(cls, folder))
        if not layers:
            log.info(
                "%s: no metadata parser recognised this folder (installed: %s)",
                folder,
                ", ".join(installed) or "none",
            )
    elif spec != "none":
        installed = None
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if ":" in part:
                cls = _class_from_spec(part)
            else:
                if installed is None:
                    installed = available_parsers()
                cls = _class_by_name(part, installed)
            layers.append(_run(cls, folder))
    if overrides is not None:
        layers.append(overrides)
    if not layers:
        return None
    return merge(*_align_names(layers))


def _align_names(layers: list[ExperimentMetadata]) -> list[ExperimentMetadata]:
    """Spell channels and positions in later layers as the first layer that named them does.

    merge() matches names case-insensitively but keeps the later spelling; a sidecar saying
    ``gfp`` must not rename the Acq file's ``GFP`` (file names and OME channel names use it).
    """
    seen: dict[str, str] = {}
    out = []
    for layer in layers:
        for item in [*layer.channels, *layer.positions]:
            seen.setdefault(item.name.lower(), item.name)

        def spelled(name: str) -> str:
            return seen.get(name.lower(), name)

        out.append(
            dataclasses.replace(
                layer,
                channels=[dataclasses.replace(c, name=spelled(c.name)) for c in layer.channels],
                positions=[
                    dataclasses.replace(
                        p,
                        name=spelled(p.name),
                        exposure_ms={spelled(k): v for k, v in p.exposure_ms.items()},
                    )
                    for p in layer.positions
                ],
            )
        )
    return out


__all__ = [
    "ENTRY_POINT_GROUP",
    "MetadataError",
    "MetadataParser",
    "available_parsers",
    "load_metadata",
]
