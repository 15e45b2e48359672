"""The import as OMERO runs it: in the background, in steps, annotations from the OME-XML.

Follows ome/omero-blitz ``ManagedImportRequestI``, ``omero/cmd/HandleI``,
``OMEROMetadataStoreClient`` and ``PixelsProcessor``; each test names what it follows.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("omero")
import omero  # noqa: E402
import omero.cmd  # noqa: E402
import omero.grid  # noqa: E402
import omero.model  # noqa: E402
import omero.sys  # noqa: E402
import tifffile  # noqa: E402
from ome_types import model as om  # noqa: E402
from ome_types import to_xml  # noqa: E402
from omero.callbacks import CmdCallbackI  # noqa: E402
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


# --- point 3: import as OMERO does it -------------------------------------------------------


class RecordingCallback(CmdCallbackI):
    """omero-py's CmdCallbackI that also records the server's step() notifications."""

    def __init__(self, client: Any, handle: Any) -> None:
        self.steps: list[tuple[int, int]] = []
        super().__init__(client, handle)

    def step(self, complete: int, total: int, current: Any = None) -> None:
        self.steps.append((complete, total))


def _import_with_steps(client: Any, path: Path, **settings: Any) -> tuple[Any, Any, list]:
    """import_file's calls, but keeping the handle's status and the step notifications."""
    mrepo = client.getManagedRepository()
    fileset = omero.model.FilesetI()
    entry = omero.model.FilesetEntryI()
    entry.setClientPath(rstring(str(path.resolve())))
    fileset.addFilesetEntry(entry)
    fileset.linkJob(omero.model.UploadJobI())
    opts = omero.grid.ImportSettings()
    opts.doThumbnails = omero.rtypes.rbool(True)
    opts.noStatsInfo = omero.rtypes.rbool(False)
    opts.checksumAlgorithm = omero.model.ChecksumAlgorithmI()
    opts.checksumAlgorithm.value = rstring("SHA1-160")
    for name, value in settings.items():
        setattr(opts, name, value)
    proc = mrepo.importFileset(fileset, opts)
    try:
        rfs = proc.getUploader(0)
        try:
            rfs.write(path.read_bytes(), 0, path.stat().st_size)
        finally:
            rfs.close()
        handle = proc.verifyUpload([client.sha1(str(path))])
        cb = RecordingCallback(client, handle)
        try:
            rsp = cb.loop(20, 500)
            status = handle.getStatus()
            return rsp, status, cb.steps
        finally:
            cb.close(True)
    finally:
        proc.close()


def _wait_for(condition: Any, seconds: float = 10.0) -> None:
    """Wait until *condition()* holds (or give up; the caller's assertion then says what)."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


def _ome_tiff_with_annotations(path: Path, tag_text: str) -> None:
    """One 8x8 image whose OME-XML carries a Tag, a Comment and a Map annotation, with ns."""
    pixels = om.Pixels(
        id="Pixels:0", dimension_order="XYZCT", type="uint8", size_x=8, size_y=8, size_z=1,
        size_c=1, size_t=1, physical_size_x=0.5, physical_size_y=0.5,
        channels=[om.Channel(id="Channel:0:0", samples_per_pixel=1)],
        tiff_data_blocks=[om.TiffData(ifd=0, plane_count=1)])
    sa = om.StructuredAnnotations(
        tag_annotations=[om.TagAnnotation(id="Annotation:0", value=tag_text, namespace="ns/tag",
                                          description="a tag")],
        comment_annotations=[om.CommentAnnotation(id="Annotation:1", value="a comment",
                                                  namespace="ns/comment")],
        map_annotations=[om.MapAnnotation(id="Annotation:2", namespace="ns/map",
                                          value=om.Map(ms=[om.Map.M(k="b", value="2"),
                                                           om.Map.M(k="a", value="1")]))])
    image = om.Image(id="Image:0", name="annotated", pixels=pixels,
                     annotation_refs=[om.AnnotationRef(id=f"Annotation:{i}") for i in range(3)])
    xml = to_xml(om.OME(images=[image], structured_annotations=sa))
    tifffile.imwrite(path, random_stack((8, 8), "uint8", seed=31), description=xml,
                     metadata=None, photometric="minisblack")


def test_import_runs_in_steps_in_the_background(server: Any, tmp_path: Path) -> None:
    """verifyUpload hands back a handle; the import reports OMERO's five steps to callbacks.

    ome/omero-blitz omero/cmd/HandleI.java (steps, notifyCallbacks: step(j, steps) after each
    step, then finished) and ManagedImportRequestI (5 steps: metadata, pixel data,
    thumbnails, processing, objects); ImportResponse.objects holds the Images only
    (buildResponse: Plates then Images), not the Fileset.
    """
    path = tmp_path / "steps.ome.tiff"
    write_ome_tiff(path, random_stack((1, 1, 2, 8, 8), "uint8", seed=32), ["c0"], [])
    with session(server) as (client, _sf):
        rsp, status, steps = _import_with_steps(client, path)
    assert isinstance(rsp, omero.grid.ImportResponse), rsp
    assert status.steps == 5 and status.currentStep == 5 and not status.flags
    _wait_for(lambda: len(steps) >= 5)  # one-way notifications may trail finished()
    assert sorted(steps) == [(j, 5) for j in range(1, 6)]
    assert [type(o).__name__ for o in rsp.objects] == ["ImageI"]
    assert rsp.objects[0].getId().getValue() == rsp.pixels[0].getImage().getId().getValue()


def test_import_creates_tags_comments_and_maps_anew(server: Any, tmp_path: Path) -> None:
    """The OME-XML's Tag, Comment and Map annotations become new objects linked to the image.

    Bio-Formats' MetadataConverter → ome/omero-blitz OMEROMetadataStoreClient
    (setTagAnnotationValue/Namespace/Description, setCommentAnnotation*, setMapAnnotation*,
    setImageAnnotationRef): new annotations, namespaces kept — an existing tag with the same
    text is not reused; two imports make two tags.
    """
    text = f"tag-{uuid.uuid4().hex}"
    path = tmp_path / "annotated.ome.tiff"
    _ome_tiff_with_annotations(path, text)
    with session(server) as (client, sf):
        existing = omero.model.TagAnnotationI()
        existing.setTextValue(rstring(text))
        existing = sf.getUpdateService().saveAndReturnObject(existing)
        image_ids = []
        for _ in range(2):
            rsp = import_file(client, path)
            assert isinstance(rsp, omero.grid.ImportResponse), rsp
            image_ids.append(rsp.pixels[0].getImage().getId().getValue())
        anns = sf.getMetadataService().loadAnnotations("Image", image_ids, [], [], None)
        tag_ids = set()
        for image_id in image_ids:
            by_kind = {type(a).__name__: a for a in anns[image_id]}
            assert set(by_kind) == {"TagAnnotationI", "CommentAnnotationI", "MapAnnotationI"}
            tag = by_kind["TagAnnotationI"]
            assert (tag.getTextValue().getValue(), tag.getNs().getValue(),
                    tag.getDescription().getValue()) == (text, "ns/tag", "a tag")
            comment = by_kind["CommentAnnotationI"]
            assert (comment.getTextValue().getValue(), comment.getNs().getValue()) == (
                "a comment", "ns/comment")
            kv = by_kind["MapAnnotationI"]
            assert kv.getNs().getValue() == "ns/map"
            assert [(p.name, p.value) for p in kv.getMapValue()] == [("b", "2"), ("a", "1")]
            tag_ids.add(tag.getId().getValue())
        assert len(tag_ids) == 2 and existing.getId().getValue() not in tag_ids
        same_text = sf.getQueryService().findAllByString("TagAnnotation", "textValue", text,
                                                         True, None)
        assert len(same_text) == 3


def test_user_specified_pixels_do_not_override_the_file(server: Any, tmp_path: Path) -> None:
    """userSpecifiedPixels fills only sizes the file lacks (ome/omero-blitz PixelsProcessor)."""
    path = tmp_path / "sized.ome.tiff"
    _ome_tiff_with_annotations(path, "sized")  # X and Y are 0.5 µm, Z is not given
    with session(server) as (client, sf):
        rsp = import_file(client, path, userSpecifiedPixels=[9.0, 9.0, 3.0])
        desc = sf.getPixelsService().retrievePixDescription(rsp.pixels[0].getId().getValue())
        assert desc.getPhysicalSizeX().getValue() == pytest.approx(0.5)
        assert desc.getPhysicalSizeY().getValue() == pytest.approx(0.5)
        assert desc.getPhysicalSizeZ().getValue() == pytest.approx(3.0)


def _listed_filesets(client: Any) -> dict[int, Any]:
    """fileset id -> handle (None before verifyUpload) of what listImports shows *client*."""
    out: dict[int, Any] = {}
    for proc in client.getManagedRepository().listImports():
        handle = proc.getHandle()
        fid = handle.getRequest().activity.getParent().getId().getValue() if handle else -1
        out[fid] = handle
    return out


def test_list_imports_shows_running_imports_to_their_user_only(
    omero_server_factory: Any, tmp_path: Path
) -> None:
    """``ManagedRepository.listImports`` (ome/omero-blitz ``ManagedRepositoryI.listImports``):
    an upload not yet verified is listed without a handle; an import still running is listed,
    with a handle whose request names its fileset, to a new session of the same user after
    the importing client left; not to another user of a private group (the fileset is not
    theirs to edit); no longer once it finished."""
    srv = omero_server_factory(import_step_ms=1000)
    gid = srv.new_group("rw----")
    srv.new_user("ann", [gid])
    srv.new_user("bob", [gid])
    f = tmp_path / "held.ome.tiff"
    write_ome_tiff(f, random_stack((1, 1, 1, 8, 8), "uint8", seed=5), ["c0"], [])
    ann = srv.client_as("ann")
    fileset = omero.model.FilesetI()
    entry = omero.model.FilesetEntryI()
    entry.setClientPath(rstring(str(f.resolve())))
    fileset.addFilesetEntry(entry)
    opts = omero.grid.ImportSettings()
    opts.checksumAlgorithm = omero.model.ChecksumAlgorithmI()
    opts.checksumAlgorithm.value = rstring("SHA1-160")
    proc = ann.getManagedRepository().importFileset(fileset, opts)
    assert _listed_filesets(ann) == {-1: None}  # uploading: no handle yet
    rfs = proc.getUploader(0)
    rfs.write(f.read_bytes(), 0, f.stat().st_size)
    rfs.close()
    handle = proc.verifyUpload([ann.sha1(str(f))])
    fid = handle.getRequest().activity.getParent().getId().getValue()
    ann.closeSession()  # the client leaves; the server goes on importing (5 steps of 1 s)
    ann2, bob = srv.client_as("ann"), srv.client_as("bob")
    try:
        listed = _listed_filesets(ann2)
        assert list(listed) == [fid] and listed[fid].getResponse() is None
        assert _listed_filesets(bob) == {}
        _wait_for(lambda: listed[fid].getResponse() is not None, 30)
        assert isinstance(listed[fid].getResponse(), omero.grid.ImportResponse)
        assert _listed_filesets(ann2) == {}
    finally:
        ann2.closeSession()
        bob.closeSession()


def test_version_is_the_release_that_shipped_its_bioformats(server: Any) -> None:
    """By default the stand-in plays a Bio-Formats that reads zstd (7.0 or later), so it says
    OMERO 5.6.9, the first release that shipped one, in ``getVersion`` and ``omero.version``
    alike; a client deciding from the version (omero_push's zstd check) then imports."""
    with session(server) as (client, sf):
        config = sf.getConfigService()
        version = config.getVersion()
        assert version.startswith("5.6.9-") and version.endswith("-standin")
        assert config.getConfigValue("omero.version") == version


def test_old_bioformats_fails_zstd_pixel_data_leaving_the_images(
    omero_server_factory: Any, tmp_path: Path
) -> None:
    """``--bioformats-version 6.10``: a zstd TIFF fails in the pixel-data step, images stay.

    As on OMERO before 5.6.9: the metadata step has saved the image (ManagedImportRequestI
    importMetadata → saveToDB), the pixel-data step then fails, and the handle ends with
    omero.cmd.ERR (category ::omero::grid::ImportRequest, flags FAILURE and CANCELLED).
    A zlib TIFF imports on the same server.
    """
    pytest.importorskip("imagecodecs")
    old = omero_server_factory(bioformats_version="6.10")
    data = random_stack((1, 1, 1, 16, 16), "uint8", seed=33)
    zstd, zlib = tmp_path / "zstd.ome.tiff", tmp_path / "zlib.ome.tiff"
    write_ome_tiff(zstd, data, ["c0"], [], compression="zstd")
    write_ome_tiff(zlib, data, ["c0"], [], compression="zlib")
    with session(old) as (client, sf):
        # It says the release that shipped such a Bio-Formats, so clients can tell beforehand.
        assert sf.getConfigService().getVersion().startswith("5.6.8-")
        rsp, status, steps = _import_with_steps(client, zstd)
        assert isinstance(rsp, omero.cmd.ERR), rsp
        assert rsp.category == "::omero::grid::ImportRequest"
        assert "50000" in rsp.parameters["message"]
        assert omero.cmd.State.FAILURE in status.flags
        assert status.stepStopTimes[0] > 0 and status.stepStopTimes[1] == 0  # failed in step 1
        left = sf.getQueryService().findAllByString("Image", "name", "zstd.ome.tiff", True, None)
        assert len(left) == 1
        assert isinstance(import_file(client, zlib), omero.grid.ImportResponse)
