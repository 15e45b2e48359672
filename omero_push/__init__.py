"""omero_push: OME-TIFFs into OMERO with description, tags, key-value pairs, provenance and tables.

The pipeline reads in the module names: ``plan`` (what to send, from files only) → ``session``
(log in, keep alive, reconnect) → ``upload`` (import mode) or ``pixels`` (pixels mode) →
``annotate`` / ``tables`` → ``provenance`` (the receipt, written last).  ``push.push`` ties them
together; ``cli`` is the command line.
"""

from omero_push.errors import PushError
from omero_push.push import PushResult, push
from posdir2ometiff import __version__

__all__ = ["PushError", "PushResult", "__version__", "push"]
