"""omero_push: OME-TIFFs into OMERO with description, tags, key-value pairs, provenance and tables."""

from posdir2ometiff import __version__

__all__ = ["__version__"]
