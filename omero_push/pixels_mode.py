"""Pixels mode: create each image on the server and write its planes, then complete it."""

from __future__ import annotations

import logging

from omero_push import annotate, pixels, provenance, receipts
from omero_push.ometiff import ImageMeta, PushItem
from omero_push.progress import Progress
from omero_push.runstate import RunState, bytes_counted, guarded, record
from omero_push.session import Session

log = logging.getLogger(__name__)


def push_pixels_image(
    session: Session,
    item: PushItem,
    im: ImageMeta,
    dataset_id: int,
    state: RunState,
    provenance_on: bool,
    tile: tuple[int, int] | None,
    progress: Progress,
) -> None:
    """Create one image, write its pixels once, complete it.

    OMERO writes a Pixels' data once (ome/omero-romio ``PixelsService._getPixelBuffer``: "Pixel
    buffer file exists returning read-only ROMIO pixel buffer"; a pyramid is read-only after its
    first read), so an image an interrupted run or attempt left half-made cannot be written into:
    it is deleted and made again ("resumed").
    """
    pending = provenance.pending_description(item.sha1, im.index)
    found = [
        annotate._val(i.getId()) for i in annotate.find_images_by_description(session, pending)
    ]
    # A half-made image of a push into another dataset is left to that push (issue #14).
    here, nowhere, elsewhere = annotate.leftovers_of(session, found, dataset_id)
    for iid, dids in sorted(elsewhere.items()):
        log.info("%s: half-made image %d belongs to Dataset:%s; left for a push there",
                 im.name, iid, ",".join(map(str, sorted(dids))))
    leftovers = sorted(here + nowhere)
    # Checked before anything is created: a file lacking planes its OME-XML promises would
    # otherwise leave a half-written image behind.
    dtype = pixels.check_planes(item.path, im)
    status = "created"
    if leftovers:
        status = "resumed"
        log.info(
            "%s: deleting %d half-made image(s) an interrupted push left (%s); making it again",
            im.name,
            len(leftovers),
            ", ".join(map(str, leftovers)),
        )
        guarded(
            session,
            lambda: annotate.delete_objects(session, "Image", leftovers),
            "deleting a half-made image",
        )
    iid = guarded(
        session, lambda: pixels.create_image(session, im, dtype, pending), "creating an image"
    )
    guarded(
        session,
        lambda: annotate.link_images_to_dataset(session, dataset_id, [iid], check=False),
        f"linking to Dataset:{dataset_id}",
    )
    with bytes_counted(progress) as on_bytes:
        pixels.push_pixels(session, item.path, im, iid, tile=tile, on_bytes=on_bytes)
    n = receipts.complete_image(session, item, im, iid, "pixels", provenance_on, state.result)
    record(state, item, im, iid, status, n, progress)
