"""``python -m tests.omero_server --port P --store DIR``: run the OMERO stand-in in the foreground.

Prints ``listening on <port>`` (flushed) once clients can connect, and stops cleanly on SIGTERM or
SIGINT. The password is read from ``--password`` (a test fixture's throw-away value) or from
``OMERO_STANDIN_PASSWORD``; defaults root/omero as a fresh OMERO.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from .faults import Faults


def _version(text: str) -> tuple[int, ...]:
    """``6.10`` -> (6, 10); argparse reports anything else as a bad value."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a version like 6.10: {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, configure logging, run the server; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m tests.omero_server",
                                description="OMERO stand-in for tests (not OMERO).")
    p.add_argument("--port", type=int, default=4063, help="TCP port (0: any free port)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--ssl-port", type=int, default=None, metavar="P",
                   help="also serve SSL (omero-py's default transport) on P (0: any free port)")
    p.add_argument("--store", type=Path, required=True, help="folder for SQLite and files")
    p.add_argument("--user", default="root", help="the account that may log in (default root)")
    p.add_argument("--password", default=os.environ.get("OMERO_STANDIN_PASSWORD", "omero"),
                   help="its password; better OMERO_STANDIN_PASSWORD (default omero)")
    p.add_argument("--drop-after-pixel-writes", type=int, default=None, metavar="N",
                   help="close the client's connection once, after N pixel writes")
    p.add_argument("--delay-ms", type=int, default=0, metavar="N", help="delay every API reply")
    p.add_argument("--no-tables", action="store_true", help="OMERO.tables disabled")
    p.add_argument("--bioformats-version", type=_version, default=None, metavar="X.Y",
                   help="pretend this Bio-Formats (below 7.0: imports of zstd TIFFs fail)")
    p.add_argument("--import-step-ms", type=int, default=0, metavar="N",
                   help="each step of a background import waits N ms first")
    p.add_argument("--glacier2", action="store_true",
                   help="serve the ports through a real glacier2router (zeroc-glacier2), as OMERO")
    p.add_argument("--session-timeout", type=int, default=None, metavar="S",
                   help="Glacier2.SessionTimeout in seconds (default 600, as OMERO)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="omero-standin %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    faults = Faults(drop_after_pixel_writes=args.drop_after_pixel_writes, delay_ms=args.delay_ms,
                    tables_enabled=not args.no_tables,
                    bioformats_version=args.bioformats_version,
                    import_step_ms=args.import_step_ms)
    import Ice  # imported here: argument errors are reported without loading Ice and omero

    from .server import serve

    try:
        return serve(args.store, args.port, args.host, args.user, args.password, faults,
                     args.ssl_port, args.glacier2, args.session_timeout)
    except (OSError, Ice.LocalException, RuntimeError) as exc:
        if args.verbose:
            raise
        what = str(exc).strip().replace("\n", " ") or type(exc).__name__
        print(f"omero stand-in: cannot start on port {args.port} with store {args.store}: {what}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
