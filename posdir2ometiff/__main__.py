"""``python -m posdir2ometiff`` runs the command line (same as the console script)."""

import sys

from posdir2ometiff.cli import main

sys.exit(main())
