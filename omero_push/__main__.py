"""``python -m omero_push`` is ``omero-push``."""

import sys

from omero_push.cli import main

sys.exit(main())
