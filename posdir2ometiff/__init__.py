"""posdir2ometiff: one tiled, pyramidal OME-TIFF per microscope position, with its metadata."""

__version__ = "0.1.0"
