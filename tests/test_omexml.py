"""OME-XML rendering: the one-pass renderer gives ome-types' text exactly, and is used."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ome_types import OME, to_xml
from ome_types.model import (
    Image,
    Pixels,
    Plane,
    TiffData,
    UnitsLength,
    UnitsTime,
)

from posdir2ometiff import omexml
from posdir2ometiff.ome import ImageSpec, build_ome, channel_specs, ome_xml
from tests.test_ome import UUID, rich_meta

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
maybe = lambda s: st.none() | s  # noqa: E731


@st.composite
def planes(draw: st.DrawFn, z: int, c: int, t: int) -> Plane:
    kw: dict = {}
    for name, unit in (("delta_t", UnitsTime), ("exposure_time", UnitsTime),
                       ("position_x", UnitsLength), ("position_y", UnitsLength),
                       ("position_z", UnitsLength)):
        value = draw(maybe(finite | st.integers(-10**6, 10**6)))
        if value is not None:
            kw[name] = value
            if draw(st.booleans()):
                kw[f"{name}_unit"] = draw(st.sampled_from(list(unit)))
    return Plane(the_z=z, the_c=c, the_t=t, **kw)


file_names = st.text(st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(
    list('&<>"\'\t\n\r µ')), min_size=1, max_size=12)


def model(plane_list: list[Plane], name: str, images: int = 1) -> OME:
    n = len(plane_list)
    uuid = UUID
    return OME(images=[Image(id=f"Image:{i}", name=f"{name}{i}", pixels=Pixels(
        id=f"Pixels:{i}", dimension_order="XYZCT", type="uint16", size_x=4, size_y=4,
        size_z=n, size_c=1, size_t=1, channels=[{"id": f"Channel:{i}:0"}],
        tiff_data_blocks=[TiffData(ifd=k, first_z=k, plane_count=1,
                                   uuid=TiffData.UUID(value=uuid, file_name=name))
                          for k in range(n)],
        planes=plane_list)) for i in range(images)])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(4, 9).flatmap(
    lambda n: st.tuples(*[planes(z, 0, 0) for z in range(n)])), file_names,
    st.integers(1, 2))
def test_render_is_ome_types_text(plane_list: tuple[Plane, ...], name: str, images: int) -> None:
    ome = model(list(plane_list), name, images)
    assert omexml.render(ome) == to_xml(ome)


def spy(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    calls = {"plane": 0, "tiff_data": 0}
    real_plane, real_td = omexml.plane_xml, omexml.tiff_data_xml

    def plane_xml(p, pad):  # type: ignore[no-untyped-def]
        calls["plane"] += 1
        return real_plane(p, pad)

    def tiff_data_xml(td, pad, step="  "):  # type: ignore[no-untyped-def]
        calls["tiff_data"] += 1
        return real_td(td, pad, step)

    monkeypatch.setattr(omexml, "plane_xml", plane_xml)
    monkeypatch.setattr(omexml, "tiff_data_xml", tiff_data_xml)
    return calls


def test_position_model_rendered_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """A converted position's model (rich metadata, DeltaT from the log) renders to ome-types'
    text, and its Plane and TiffData elements come from the one-pass renderer."""
    spec = ImageSpec(name="pos001", size_x=64, size_y=48, size_z=3, size_t=20,
                     channels=channel_specs(["Brightfield", "GFP", "mCherry"], [1, 1, 1]),
                     dtype=np.dtype("uint16"), missing=["t=2 c=GFP z=3"])
    ome = build_ome(spec, rich_meta(), file_name="pos&001 \"µ\".ome.tiff", uuid=UUID)
    calls = spy(monkeypatch)
    assert ome_xml(ome) == to_xml(ome)
    assert calls == {"plane": 180, "tiff_data": 180}
    ome_xml(ome, validate=True)  # the schema accepts it


def test_render_keeps_nothing_of_the_model() -> None:
    """The value texts cached during a render go with it: kept, one per IFD number, they pinned
    the memory of the whole model (peak RSS grew with T)."""
    spec = ImageSpec(name="pos001", size_x=64, size_y=48, size_z=5, size_t=40,
                     channels=channel_specs(["GFP"], [1]), dtype=np.dtype("uint16"))
    ome = build_ome(spec, rich_meta(), file_name="pos001.ome.tiff", uuid=UUID)
    assert omexml.render(ome) == to_xml(ome)
    assert not omexml._TEXTS


def test_mutated_plane_counts_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value assigned after construction is written, as ``to_xml`` writes it."""
    ome = model([Plane(the_z=z, the_c=0, the_t=0) for z in range(5)], "a.ome.tiff")
    ome.images[0].pixels.planes[3].delta_t = 1.5
    ome.images[0].pixels.planes[3].delta_t_unit = UnitsTime.MILLISECOND
    assert 'DeltaT="1.5" DeltaTUnit="ms"' in omexml.render(ome)
    assert omexml.render(ome) == to_xml(ome)


@pytest.mark.parametrize("odd", ["hash", "annotation"])
def test_plane_with_children_falls_back(odd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Planes with child elements are not the one-pass renderer's: ome-types renders all."""
    plane_list = [Plane(the_z=z, the_c=0, the_t=0, delta_t=z * 0.5) for z in range(6)]
    if odd == "hash":
        plane_list[4].hash_sha1 = "0" * 40
    else:
        plane_list[4].annotation_refs = [{"id": "Annotation:1"}]
    ome = model(plane_list, "a.ome.tiff")
    assert omexml.render(ome) == to_xml(ome)


def test_special_floats() -> None:
    plane_list = [Plane(the_z=z, the_c=0, the_t=0, delta_t=v) for z, v in
                  enumerate([0.0, -0.0, 1e16, 1e-7, math.pi, 2.5e-300, 123456789.125])]
    ome = model(plane_list, "a.ome.tiff")
    assert omexml.render(ome) == to_xml(ome)


def _position_spec(size_t: int = 20, names: tuple[str, ...] = ("Brightfield", "GFP", "mCherry"),
                   samples: tuple[int, ...] = (1, 1, 1)) -> ImageSpec:
    return ImageSpec(name="pos001", size_x=64, size_y=48, size_z=3, size_t=size_t,
                     channels=channel_specs(list(names), list(samples)),
                     dtype=np.dtype("uint16"), missing=["t=2 c=GFP z=3"],
                     t_numbers=list(range(1, size_t + 1)))


@pytest.mark.parametrize("meta", ["rich", "none"])
@pytest.mark.parametrize("size_t", [1, 20])
def test_streamed_position_xml_is_the_whole_models_text(
    meta: str, size_t: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the converter writes (made plane by plane) is ome-types' text of build_ome's model,
    and the per-plane elements came from the one-pass renderer."""
    from posdir2ometiff.ome import position_ome_xml

    spec = _position_spec(size_t)
    m = rich_meta() if meta == "rich" else None
    name = "pos&001 \"µ\".ome.tiff"
    expected = to_xml(build_ome(spec, m, file_name=name, uuid=UUID))
    calls = spy(monkeypatch)
    assert position_ome_xml(spec, m, file_name=name, uuid=UUID) == expected
    n = spec.size_t * spec.size_c * spec.size_z
    assert calls == {"plane": n, "tiff_data": n}  # each once (the first: checked against xsdata)
    assert not omexml._TEXTS


def test_streamed_position_xml_falls_back_to_the_whole_model(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pair the one-pass renderer cannot write (here: it declines the 7th Plane) sends the
    whole model, rebuilt, through ome-types: the same text."""
    from posdir2ometiff.ome import position_ome_xml

    spec = _position_spec(4, ("DIC", "RGB"), (1, 3))
    expected = to_xml(build_ome(spec, rich_meta(), file_name="p.ome.tiff", uuid=UUID))
    real = omexml.plane_xml
    seen = []

    def picky(p, pad):  # type: ignore[no-untyped-def]
        seen.append(p)
        return None if len(seen) == 7 else real(p, pad)

    monkeypatch.setattr(omexml, "plane_xml", picky)
    assert position_ome_xml(spec, rich_meta(), file_name="p.ome.tiff", uuid=UUID) == expected


def test_streamed_position_xml_never_holds_the_whole_model() -> None:
    """Peak memory of the streamed rendering is a fraction of the whole model's (which held
    three objects per plane at once: 10 MB at 3,000 planes)."""
    import tracemalloc

    from posdir2ometiff.ome import position_ome_xml

    spec = _position_spec(200)  # 1,800 planes
    meta = rich_meta()
    peaks = []
    for make in (lambda: ome_xml(build_ome(spec, meta, file_name="p.ome.tiff", uuid=UUID)),
                 lambda: position_ome_xml(spec, meta, file_name="p.ome.tiff", uuid=UUID)):
        tracemalloc.start()
        try:
            xml = make()
            peaks.append(tracemalloc.get_traced_memory()[1])
        finally:
            tracemalloc.stop()
        del xml
    whole, streamed = peaks
    assert streamed < 0.5 * whole, (streamed, whole)
