"""``omero push``: registers omero_push's command with OMERO's CLI (see omero_push.omero_cli).

As ome/omero-cli-transfer's ``src/omero/plugins/transfer.py``: OMERO's CLI executes every file in
``omero/plugins`` with ``register`` defined; run directly, the file starts a CLI of its own.
No ``__init__.py`` here or in ``omero/``: those belong to omero-py, and this folder only adds a file.
"""

import sys

from omero_push.omero_cli import HELP, PushControl

try:
    register("push", PushControl, HELP)  # noqa: F821 - defined by omero.cli.CLI.loadpath
except NameError:
    if __name__ == "__main__":
        from omero.cli import CLI

        cli = CLI()
        cli.register("push", PushControl, HELP)
        cli.invoke(sys.argv[1:])
