"""The custom metadata parser shown in the README (tests run it through ``--metadata module:Class``).

A lab whose software writes ``settings.json`` next to the position folders, e.g.::

    {"operator": "Ada", "pixel_size_um": 0.1,
     "channels": [{"name": "GFP", "exposure_ms": 50}, {"name": "mCherry", "exposure_ms": 100}]}
"""

from __future__ import annotations

import json
from pathlib import Path

from posdir2ometiff.metadata.model import Channel, ExperimentMetadata
from posdir2ometiff.metadata.plugins import MetadataError


class JsonSettingsParser:
    name = "json-settings"
    priority = 10  # tried before the built-in parsers when both recognise a folder

    def detect(self, folder: Path) -> bool:
        return (folder / "settings.json").is_file()

    def parse(self, folder: Path) -> ExperimentMetadata:
        path = folder / "settings.json"
        try:
            s = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise MetadataError(f"{path}: {exc}") from exc
        return ExperimentMetadata(
            sources=[self.name],
            pixel_size_um=s.get("pixel_size_um"),
            channels=[
                Channel(name=c["name"], exposure_ms=c.get("exposure_ms"))
                for c in s.get("channels", [])
            ],
            key_values=[("Operator", s["operator"])] if "operator" in s else [],
        )
