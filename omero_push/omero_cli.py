"""``omero push``: omero-push as a command of OMERO's own CLI, on the session of ``omero login``.

Packaged as omero-cli-transfer packages ``omero transfer``: a thin ``omero/plugins/push.py``
(found by ``omero.cli.CLI.loadplugins`` in every ``sys.path`` entry's ``omero/plugins`` folder)
registers :class:`PushControl`; the work is :func:`omero_push.cli.run`.  The login arguments are
OMERO's (``parser.add_login_arguments()``: ``-s -p -u -g -k -w -C --sudo -q``) and the connection
is ``self.ctx.conn(args)``: the stored ``omero login`` session, or a login the CLI does itself.
That connection belongs to the CLI, which closes (and, for stored sessions, detaches) it; the push
never closes it.
"""

from __future__ import annotations

import argparse
from typing import Any

from omero.cli import BaseControl

from omero_push import cli

HELP = """Put OME-TIFFs (or posdir2ometiff output folders) into OMERO, on your 'omero login' session.

Same options as omero-push; -d/--dataset given a number is a Dataset ID, -T/--target takes
omero import's templates. Re-running creates nothing new; an interrupted push is completed by
running it again.

Examples:
  omero login alice@omero.example.org
  omero push OUT/ -d 1234
  omero push OUT/ -T Project:name:Screens/Dataset:name:exp42 --tag yeast --kv Medium=SC
  omero push a.ome.tiff --dry-run -T Dataset:name:exp42
"""


class PushControl(BaseControl):
    """The ``omero push`` command."""

    def _configure(self, parser: argparse.ArgumentParser) -> None:
        parser.add_login_arguments()  # type: ignore[attr-defined]  # omero.cli's Parser
        cli.add_push_arguments(parser, quiet=False)  # -q comes with the login arguments
        parser.set_defaults(func=self.__call__)

    def __call__(self, args: argparse.Namespace) -> None:
        conn: Any = None
        if not args.dry_run:  # a dry run connects to nothing, as omero-push's
            conn = self.ctx.conn(args)
        rc = cli.run(_with_standalone_defaults(args), conn=conn)
        if rc:
            self.ctx.die(rc, "omero push: failed (see above)")


def _with_standalone_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """The options only ``omero-push`` has, as absent (the login is OMERO's here)."""
    for name in ("config", "session_key"):
        if not hasattr(args, name):
            setattr(args, name, None)
    return args
