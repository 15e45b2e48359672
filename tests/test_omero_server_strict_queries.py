"""Queries and checks as OMERO makes them: ``findAllByString`` as ``QueryImpl``'s ``LIKE``,
exact checksums in ``verifyUpload``, one link per (parent, child, owner).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.model  # noqa: E402
import omero.sys  # noqa: E402
from omero.rtypes import rstring  # noqa: E402

from tests.test_omero_server_data import (  # noqa: E402
    import_file,
    random_stack,
    session,
    write_ome_tiff,
)

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def server(omero_server_session: Any) -> Any:
    """The shared stand-in (tests here never assume an empty store)."""
    return omero_server_session


# --- point 4: queries and checks as OMERO ---------------------------------------------------


def _datasets(sf: Any, names: list[str]) -> None:
    update = sf.getUpdateService()
    for name in names:
        ds = omero.model.DatasetI()
        ds.setName(rstring(name))
        update.saveObject(ds)


def test_find_all_by_string_is_like_anywhere(server: Any) -> None:
    """findAllByString is ``LIKE '%value%'``: a substring, ``_`` and ``%`` wildcards, ILIKE.

    ome/omero-server QueryImpl.findAllByString: Restrictions.like(field, value,
    MatchMode.ANYWHERE), or ilike when not case-sensitive; findByString stays equality.
    """
    u = uuid.uuid4().hex
    names = [f"{u}alpha_beta", f"{u}alphaXbeta", f"{u}ALPHA_BETA-2", f"x{u}alpha"]
    with session(server) as (_client, sf):
        _datasets(sf, names)
        query = sf.getQueryService()

        def found(value: str, case: bool = True) -> set[str]:
            got = query.findAllByString("Dataset", "name", value, case, None)
            return {d.getName().getValue() for d in got}

        assert found(f"{u}alpha") == {names[0], names[1], names[3]}  # a substring
        assert found(f"{u}alpha_beta") == {names[0], names[1]}  # "_" is any one character
        assert found(f"{u}alpha_beta", False) == set(names[:3])  # ILIKE
        assert found(f"{u}%beta") == {names[0], names[1]}  # "%" is any run
        assert found(f"{u}alpha\\_beta") == {names[0]}  # PostgreSQL's escape
        assert query.findByString("Dataset", "name", f"{u}alpha") is None  # equality
        page = omero.sys.Filter()
        page.offset, page.limit = omero.rtypes.rint(1), omero.rtypes.rint(1)
        assert len(query.findAllByString("Dataset", "name", u, True, page)) == 1


def test_verify_upload_compares_hashes_exactly(server: Any, tmp_path: Path) -> None:
    """An upper-case SHA-1 is a mismatch: ManagedImportProcessI.verifyUpload uses equals().

    ome/omero-blitz ManagedImportProcessI.verifyUpload: ``!clientHash.equals(serverHash)``
    → ChecksumValidationException("A checksum mismatch has occurred.", {index: server hash}).
    """
    path = tmp_path / "upper.ome.tiff"
    write_ome_tiff(path, random_stack((1, 1, 1, 8, 8), "uint8"), ["c0"], [])
    with session(server) as (client, _sf):
        sha1 = client.sha1(str(path))
        with pytest.raises(omero.ChecksumValidationException) as err:
            import_file(client, path, sha1=sha1.upper())
        assert err.value.message == "A checksum mismatch has occurred."
        assert err.value.failingChecksums == {0: sha1}


def test_a_link_is_unique_per_parent_child_and_owner(server: Any) -> None:
    """A second link between the same parent and child, same owner, is refused.

    OMERO's schema: UNIQUE (parent, child, owner_id) on every link table; the violation
    reaches the client as omero.ValidationException (ome/omero-server ServiceHandler).
    """
    with session(server) as (_client, sf):
        update = sf.getUpdateService()
        ds = omero.model.DatasetI()
        ds.setName(rstring("links"))
        ds = update.saveAndReturnObject(ds)
        tag = omero.model.TagAnnotationI()
        tag.setTextValue(rstring(f"tag-{uuid.uuid4().hex}"))
        tag = update.saveAndReturnObject(tag)

        def link() -> Any:
            lnk = omero.model.DatasetAnnotationLinkI()
            lnk.setParent(omero.model.DatasetI(ds.getId().getValue(), False))
            lnk.setChild(omero.model.TagAnnotationI(tag.getId().getValue(), False))
            return lnk

        update.saveObject(link())
        with pytest.raises(omero.ValidationException, match="unique"):
            update.saveObject(link())
        with pytest.raises(omero.ValidationException, match="unique"):
            update.saveArray([link()])
        tag2 = omero.model.TagAnnotationI()
        tag2.setTextValue(rstring("other"))
        tag2 = update.saveAndReturnObject(tag2)
        pair = [link(), link()]
        for lnk in pair:
            lnk.setChild(omero.model.TagAnnotationI(tag2.getId().getValue(), False))
        with pytest.raises(omero.ValidationException, match="unique"):
            update.saveArray(pair)  # two in one transaction
        links = sf.getQueryService().findAllByQuery(
            "select l from DatasetAnnotationLink l where l.parent.id = :id",
            omero.sys.ParametersI().addId(ds.getId().getValue()))
        assert len(links) == 1
