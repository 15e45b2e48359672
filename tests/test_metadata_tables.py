"""HDF5 tables: one file per experiment, every table, typed columns, pandas.read_hdf reads it back."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest

from posdir2ometiff.metadata.model import ExperimentMetadata, PlaneTime
from posdir2ometiff.metadata.swainlab import SwainLabParser
from posdir2ometiff.metadata.tables import read_tables, write_tables


def test_sample_tables_round_trip_with_types(swainlab_sample: Path, tmp_path: Path) -> None:
    meta = SwainLabParser().parse(swainlab_sample)
    path = tmp_path / "out" / "experiment.h5"
    names = write_tables(meta, path)
    assert names == [
        "channels",
        "z_sectioning",
        "time_settings",
        "positions",
        "pumps",
        "switching",
        "plane_times",
    ]
    assert path.is_file()
    assert not [p for p in path.parent.iterdir() if p.name != path.name], "no temporary left"
    back = read_tables(path)
    assert set(back) == set(names)
    for name, df in meta.tables.items():
        pd.testing.assert_frame_equal(back[name], df.reset_index(drop=True))
    # Any HDF5 reader, not only ours: pandas.read_hdf by node name.
    pos = pd.read_hdf(path, "positions")
    assert pos.loc[0, "X position"] == 10846.5
    assert pos["X position"].dtype == "float64"
    assert pos["GFP"].dtype == "int64"
    assert pd.api.types.is_string_dtype(pos["Position name"])
    pts = pd.read_hdf(path, "plane_times")
    assert len(pts) == 225
    assert pts["t"].dtype == "int64" and pts["time"].dtype.kind == "M"
    first = pts[(pts.position == "pos001") & (pts.t == 0) & (pts.channel == "GFP")]
    assert first["time"].iloc[0] == pd.Timestamp("2018-09-28 17:18:22")


def test_non_ascii_text_survives(tmp_path: Path) -> None:
    meta = ExperimentMetadata(
        tables={
            "pumps": pd.DataFrame(
                {
                    "Contents": ["2% glucose 30\u00b0C", "\u00b5-slide"],
                    "n": pd.Series([1, 2], dtype="int64"),
                }
            )
        }
    )
    write_tables(meta, tmp_path / "t.h5")
    assert pd.read_hdf(tmp_path / "t.h5", "pumps")["Contents"].tolist() == [
        "2% glucose 30\u00b0C",
        "\u00b5-slide",
    ]


def test_nothing_to_write_writes_nothing(tmp_path: Path) -> None:
    assert write_tables(ExperimentMetadata(), tmp_path / "t.h5") == []
    assert not (tmp_path / "t.h5").exists()


def test_plane_times_only(tmp_path: Path) -> None:
    meta = ExperimentMetadata(
        plane_times=[PlaneTime("pos001", 0, "GFP", datetime(2020, 1, 1), z=2)]
    )
    assert write_tables(meta, tmp_path / "t.h5") == ["plane_times"]
    assert read_tables(tmp_path / "t.h5")["plane_times"]["z"].tolist() == [2]


def test_failed_write_leaves_no_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "t.h5"
    path.write_bytes(b"previous complete file")
    meta = ExperimentMetadata(tables={"a": pd.DataFrame({"x": [1]}), "b": pd.DataFrame({"y": [2]})})
    real_put = pd.HDFStore.put
    calls = []

    def failing_put(self, key, value, **kw):
        calls.append(key)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_put(self, key, value, **kw)

    monkeypatch.setattr(pd.HDFStore, "put", failing_put)
    with pytest.raises(OSError, match="disk full"):
        write_tables(meta, path)
    assert path.read_bytes() == b"previous complete file", "the final name is never half-written"
    assert [p.name for p in tmp_path.iterdir()] == ["t.h5"]


def test_table_names_become_valid_node_names(tmp_path: Path) -> None:
    meta = ExperimentMetadata(
        tables={
            "Dynamic flow / switching": pd.DataFrame({"x": [1.5]}),
            "2nd": pd.DataFrame({"x": ["a"]}),
        }
    )
    names = write_tables(meta, tmp_path / "t.h5")
    assert names == ["Dynamic_flow_switching", "t_2nd"]
    assert pd.read_hdf(tmp_path / "t.h5", "t_2nd")["x"].tolist() == ["a"]


def test_empty_table_is_not_listed(tmp_path: Path) -> None:
    meta = ExperimentMetadata(
        tables={
            "pumps": pd.DataFrame({"Pump port": pd.Series([], dtype="str")}),
            "z": pd.DataFrame({"n": [5]}),
        }
    )
    assert write_tables(meta, tmp_path / "t.h5") == ["z"]
    assert set(read_tables(tmp_path / "t.h5")) == {"z"}


def test_hdf5_never_writes_to_disk_itself(swainlab_sample: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """HDF5 builds the file in memory; the one write to the disk is ours (atomic.py), where a
    full disk is an OSError naming the file, never a silent loss inside HDF5."""
    from posdir2ometiff import atomic
    from posdir2ometiff.metadata import tables as tables_mod

    meta = SwainLabParser().parse(swainlab_sample)
    images: list[bytes] = []
    real = atomic.write_bytes_atomic

    def recording(path, data):  # type: ignore[no-untyped-def]
        assert not list(tmp_path.iterdir())  # nothing on disk before our write
        images.append(data)
        return real(path, data)

    monkeypatch.setattr(tables_mod, "write_bytes_atomic", recording)
    final = tmp_path / "experiment.h5"
    names = write_tables(meta, final)
    assert len(images) == 1 and final.read_bytes() == images[0]
    assert set(read_tables(final)) == set(names)
    assert [p.name for p in tmp_path.iterdir()] == ["experiment.h5"]
