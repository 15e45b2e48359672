"""OME model → OME-XML text, with the per-plane lists rendered in one pass.

ome-types renders through xsdata, which walks every field of every object and builds an lxml
tree: about 0.4 ms per element. A position's XML is mostly two lists with one element per plane
(``Plane`` and ``TiffData``), so a 300-plane position took 0.25 s to render and a 3,600-plane one
(issue 11's size) about 3 s, all of it before the first plane could be written, and the lxml
tree grew the peak memory with T.

:func:`render` therefore renders the model with only the *first* Plane and TiffData of each
image through ome-types, and the rest with :func:`plane_xml` / :func:`tiff_data_xml`, which take
each attribute's name and order from xsdata's metadata of the model class, apply the rule
ome-types' ``to_xml`` applies (unset attributes left out), turn values into text with xsdata's
own converter, and escape as lxml does. The result is the same text, not an approximation of it:

* at run time, the first element of each list is rendered both ways and must match character
  for character, indentation included, or the whole document is rendered by ome-types instead;
* tests/test_omexml.py renders random models both ways and compares the documents.

Anything the one-pass renderer does not handle (a Plane with a HashSHA1 or annotation links, a
TiffData without a UUID child of the usual shape) also sends the document to ome-types.

:func:`render_streamed` does the same for a position's model whose Plane and TiffData pairs come
from an iterator, so the converter never holds them all at once (ome.position_ome_xml).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from enum import Enum
from functools import cache
from typing import Any

from ome_types import OME, to_xml
from ome_types._conversion import OME_2016_06_URI
from ome_types.model import Plane, TiffData
from xsdata.formats.converter import QName, converter
from xsdata_pydantic_basemodel.bindings import SerializerConfig, XmlContext, XmlSerializer

logger = logging.getLogger(__name__)

#: Lists shorter than this are left to ome-types (nothing to gain).
MIN_FAST = 4


@cache
def _context() -> XmlContext:
    """One xsdata context for the process: building it describes every model class (40 ms),
    which ``ome_types.to_xml`` repeats on each call."""
    return XmlContext()


def _to_xml(ome: OME) -> str:
    """``ome_types.to_xml(ome)`` with its default arguments, on the process's xsdata context.

    The same steps as ome-types 0.7's ``to_xml`` (``_conversion.py``): update the set fields,
    serialise with unset attributes left out, 2-space indent, the schema location, the default
    namespace."""
    config = SerializerConfig(indent="  ", xml_declaration=False,
                              ignore_default_attributes=False, ignore_unset_attributes=True,
                              attribute_sort_key=None)
    config.schema_location = f"{OME_2016_06_URI} {OME_2016_06_URI}/ome.xsd"
    ome._update_set_fields()
    return XmlSerializer(config=config, context=_context()).render(
        ome, ns_map={None: OME_2016_06_URI})


_ATTR_SPECIAL = re.compile('[&<>"\t\n\r]')
_TEXT_SPECIAL = re.compile("[&<>\r]")


def _attr_escape(text: str) -> str:
    """Attribute value escaped as lxml escapes it (``&<>"`` and tab, CR, LF as char refs)."""
    if not _ATTR_SPECIAL.search(text):
        return text
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace('"', "&quot;").replace("\t", "&#9;").replace("\n", "&#10;")
            .replace("\r", "&#13;"))


def _text_escape(text: str) -> str:
    """Element text escaped as lxml escapes it (``&<>`` and CR)."""
    if not _TEXT_SPECIAL.search(text):
        return text
    return (text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("\r", "&#13;"))


#: An attribute as xsdata writes it: field name, XML name, value format, default.
_Spec = tuple[str, str, "str | None", Any]


@cache
def _specs(cls: type) -> tuple[_Spec, ...] | None:
    """The attributes of ``cls`` in the order xsdata writes them, from xsdata's own metadata
    of the class (None: a wildcard attribute, left to ome-types)."""
    meta = _context().build(cls)
    out = []
    for var in meta.get_attribute_vars():
        if not var.is_attribute:
            return None
        default = cls.model_fields[var.name].get_default(call_default_factory=True)
        out.append((var.name, var.qname, var.format, default))
    return tuple(out)


#: Rendered attributes (`` Name="text"``) during one :func:`render`, by (XML name, format,
#: value type, value): most attributes of a position's planes repeat (units, exposures, stage
#: positions, small indices), so one dict lookup replaces xsdata's converter, the escaping and
#: the formatting (measured, old and new alternating in one process: 24 instead of 30 µs per
#: plane's Plane and TiffData). Emptied when the render returns: kept, its few thousand small
#: entries, one per distinct IFD number, would pin the memory of the model it rendered, 10 MB at
#: 3000 planes, for the rest of the process (measured as peak RSS growing with T).
_TEXTS: dict[tuple[str, str | None, type, Any], str] = {}


def _value_text(value: Any, fmt: str | None) -> str | None:
    """xsdata's text of an attribute value (``encode_primitive``: an enum by its value, a
    number through xsdata's converter), or None for what it leaves to its writer (a QName)."""
    if isinstance(value, str):
        return None if isinstance(value, QName) else value
    if isinstance(value, Enum):
        return _value_text(value.value, fmt)
    if isinstance(value, (list, tuple)):
        return None
    return converter.serialize(value, format=fmt)


def _attribute(qname: str, fmt: str | None, value: Any) -> str | None:
    """`` qname="text"`` for one value, escaped, or None for what ome-types must render."""
    cacheable = bool(value) and not isinstance(value, (list, tuple))  # 0.0 and -0.0 are equal
    if cacheable:                                                     # keys, different texts
        key = (qname, fmt, type(value), value)
        found = _TEXTS.get(key)
        if found is not None:
            return found
    text = _value_text(value, fmt)
    if text is None:
        return None
    rendered = f' {qname}="{_attr_escape(text)}"'
    if cacheable and len(_TEXTS) < 100_000:
        _TEXTS[key] = rendered
    return rendered


def _attributes(obj: Any) -> str | None:
    """`` Name="value"`` for each attribute xsdata writes with ome-types' defaults: unset
    attributes left out, where "set" is what ``to_xml`` makes of it (``_update_set_fields``: a
    value that is truthy and not the default counts as set), None never written."""
    specs = _specs(type(obj))
    if specs is None:
        return None
    fields_set = obj.model_fields_set
    values = obj.__dict__  # pydantic keeps field values here; getattr costs a descriptor lookup
    out = []
    for name, qname, fmt, default in specs:
        value = values[name]
        if value is None:
            continue
        if name not in fields_set and (not value or value == default):
            continue
        text = _attribute(qname, fmt, value)
        if text is None:
            return None
        out.append(text)
    return "".join(out)


def plane_xml(plane: Plane, pad: str) -> str | None:
    """One ``<Plane .../>`` line, or None if it has child elements (left to ome-types)."""
    if plane.hash_sha1 is not None or plane.annotation_refs:
        return None
    attrs = _attributes(plane)
    return None if attrs is None else f"{pad}<Plane{attrs}/>"


def tiff_data_xml(td: TiffData, pad: str, step: str = "  ") -> str | None:
    """One ``<TiffData ...>`` block with its ``<UUID>`` child, or None if it has another shape."""
    if td.uuid is None or not td.uuid.value:
        return None
    attrs, uuid_attrs = _attributes(td), _attributes(td.uuid)
    if attrs is None or uuid_attrs is None:
        return None
    return (f"{pad}<TiffData{attrs}>\n"
            f"{pad}{step}<UUID{uuid_attrs}>{_text_escape(td.uuid.value)}</UUID>\n"
            f"{pad}</TiffData>")


def _splice(xml: str, cursor: int, tag: str, items: Sequence[Any],
            one: Callable[[Any, str], str | None]) -> tuple[str, int] | None:
    """Replace the single rendered ``<tag`` element at or after ``cursor`` by all of ``items``.

    Returns the new text and a cursor after the inserted elements, or None when the rendered
    element is not exactly what ``one`` makes of ``items[0]`` (then ome-types renders all)."""
    found = _element_at(xml, cursor, tag, items[0], one)
    if found is None:
        return None
    line, end, pad = found
    rendered = [xml[line:end]]
    for item in items[1:]:
        text = one(item, pad)
        if text is None:
            return None
        rendered.append(text)
    block = "\n".join(rendered)
    return xml[:line] + block + xml[end:], line + len(block)


def render(ome: OME) -> str:
    """The OME-XML of ``ome``, as :func:`ome_types.to_xml` renders it, in a fraction of its time
    for images with many planes."""
    try:
        return _render(ome)
    finally:
        _TEXTS.clear()


def _render(ome: OME) -> str:
    images = list(ome.images)
    big = {id(im) for im in images if im.pixels is not None and (
        len(im.pixels.planes) >= MIN_FAST or len(im.pixels.tiff_data_blocks) >= MIN_FAST)}
    if not big:
        return to_xml(ome)
    reduced = []
    for im in images:
        px = im.pixels
        if id(im) in big:
            px = px.model_copy(update={"planes": px.planes[:1],
                                       "tiff_data_blocks": px.tiff_data_blocks[:1]})
            im = im.model_copy(update={"pixels": px})
        reduced.append(im)
    xml = _to_xml(ome.model_copy(update={"images": reduced}))
    cursor = 0
    for im in images:
        if id(im) not in big:
            continue
        # Each image's Pixels holds its TiffData blocks, then its Planes (OME 2016-06 order).
        for tag, items, one in (("TiffData", im.pixels.tiff_data_blocks, tiff_data_xml),
                                ("Plane", im.pixels.planes, plane_xml)):
            if not items:
                continue
            done = _splice(xml, cursor, tag, items, one)
            if done is None:
                logger.debug("OME-XML: %s elements rendered by ome-types", tag)
                return to_xml(ome)
            xml, cursor = done
    return xml


def render_streamed(
    ome: OME, elements: Iterator[tuple[Plane, TiffData]], rebuild: Callable[[], OME]
) -> str:
    """The OME-XML of ``ome`` (one image, its Plane and TiffData lists empty) with the pairs of
    ``elements`` as those lists, each pair made, rendered and dropped in turn: the text
    :func:`render` gives for the whole model, without the whole model in memory.

    The first pair joins the model and is rendered by ome-types, as in :func:`render`; anything
    the one-pass renderer does not reproduce makes ``rebuild()`` (the whole model) render through
    ome-types instead."""
    try:
        return _render_streamed(ome, elements, rebuild)
    finally:
        _TEXTS.clear()


def _render_streamed(
    ome: OME, elements: Iterator[tuple[Plane, TiffData]], rebuild: Callable[[], OME]
) -> str:
    (image,) = ome.images
    first = next(elements, None)
    if first is None:
        return _to_xml(ome)
    pixels = image.pixels
    pixels.planes, pixels.tiff_data_blocks = [first[0]], [first[1]]
    xml = _to_xml(ome)
    # Where each list's single rendered element sits, and its indentation.
    places = []
    cursor = 0
    for tag, item, one in (("TiffData", first[1], tiff_data_xml), ("Plane", first[0], plane_xml)):
        found = _element_at(xml, cursor, tag, item, one)
        if found is None:
            logger.debug("OME-XML: %s elements rendered by ome-types", tag)
            return to_xml(rebuild())
        places.append(found)
        cursor = found[1]
    (td_start, td_end, td_pad), (pl_start, pl_end, pl_pad) = places
    tiff_data, planes = [xml[td_start:td_end]], [xml[pl_start:pl_end]]
    for plane, td in elements:
        td_text, plane_text = tiff_data_xml(td, td_pad), plane_xml(plane, pl_pad)
        if td_text is None or plane_text is None:
            logger.debug("OME-XML: a Plane or TiffData rendered by ome-types")
            return to_xml(rebuild())
        tiff_data.append(td_text)
        planes.append(plane_text)
    return "".join((xml[:td_start], "\n".join(tiff_data), xml[td_end:pl_start],
                    "\n".join(planes), xml[pl_end:]))


def _element_at(xml: str, cursor: int, tag: str, item: Any,
                one: Callable[[Any, str], str | None]) -> tuple[int, int, str] | None:
    """(start of line, end, indentation) of the single rendered ``<tag`` element at or after
    ``cursor``, when it is exactly what ``one`` makes of ``item``; else None."""
    start = xml.find(f"<{tag} ", cursor)
    if start < 0:
        return None
    line = xml.rfind("\n", 0, start) + 1
    pad = xml[line:start]
    if pad.strip(" "):
        return None
    text = one(item, pad)
    if text is None or not xml.startswith(text, line):
        return None
    end = line + len(text)
    if xml[end:end + 1] != "\n":
        return None
    return line, end, pad
