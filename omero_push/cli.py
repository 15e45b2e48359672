"""``omero-push``: the command line over :func:`omero_push.push.push`.

The only module that configures logging or prints.  Library errors (typed, see ``errors.py``)
become one line on stderr and an exit status; a traceback appears only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from omero_push.config import DEFAULT_PORT
from omero_push.errors import PushError
from omero_push.plan import format_plan
from omero_push.progress import make_progress
from omero_push.push import MODES, push
from omero_push.upload import DEFAULT_CHUNK
from posdir2ometiff import __version__
from posdir2ometiff.argtypes import float_in, int_in, port, tile_wxh
from posdir2ometiff.logconfig import cli_logging

log = logging.getLogger("omero_push.cli")

SESSION_KEY_ENV = "OMERO_SESSION_KEY"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omero-push",
        description=(
            "Put OME-TIFFs into OMERO with description, tags, key-value pairs, provenance and "
            "OMERO.tables. Re-running creates nothing new; an interrupted push is completed by "
            "running it again. The password comes from OMERO_PASSWORD or a prompt, never from "
            "the command line."
        ),
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="converter output folder (with manifest.json), OME-TIFF file, or with --convert a "
        "raw experiment folder",
    )
    conn = p.add_argument_group("connection")
    conn.add_argument("--server", "-s", help="OMERO host (or 'host:' in --config)")
    conn.add_argument("--port", "-p", type=port, help=f"OMERO port (default {DEFAULT_PORT})")
    conn.add_argument("--user", "-u", help="OMERO user name")
    conn.add_argument("--group", "-g", help="OMERO group to push into (default: the user's)")
    conn.add_argument(
        "--session-key",
        "-k",
        help=f"join an existing session instead of logging in (or set {SESSION_KEY_ENV})",
    )
    conn.add_argument(
        "--config",
        "-c",
        help="YAML file with host/port/username/group (pyOmeroUpload's omero_conn: keys work)",
    )
    target = p.add_argument_group("target")
    target.add_argument(
        "--dataset",
        "-d",
        help="dataset name (found or created) or Dataset:ID; default: the manifest's",
    )
    target.add_argument("--project", "-P", help="project name (found or created)")
    what = p.add_argument_group("what is sent")
    what.add_argument(
        "--mode",
        choices=MODES,
        default="import",
        help="import: upload the original file (kept in OMERO; default); pixels: write pixels only",
    )
    what.add_argument(
        "--no-provenance",
        action="store_true",
        help="no provenance record; only a checksum marker so re-runs still recognise images",
    )
    what.add_argument(
        "--convert", action="store_true", help="PATH is a raw experiment: convert first"
    )
    what.add_argument(
        "--convert-out", help="keep converted files here (default: a temporary folder)"
    )
    tune = p.add_argument_group("tuning")
    tune.add_argument(
        "--chunk-size",
        type=float_in(0.0, 1024.0),
        default=DEFAULT_CHUNK / 2**20,
        help="upload chunk in MiB (import mode; default %(default)s)",
    )
    tune.add_argument("--tile", type=tile_wxh(), help="tile WxH for pixels mode (default: the server's tile size)")
    tune.add_argument(
        "--parallel",
        type=int_in(1, 64),
        default=2,
        help="files (import) or images (pixels) in flight at once (default %(default)s)",
    )
    tune.add_argument(
        "--retries", type=int_in(0, 1000), default=5, help="reconnects on connection loss (default %(default)s)"
    )
    out = p.add_argument_group("output")
    out.add_argument("--dry-run", "-n", action="store_true", help="print the plan; send nothing")
    verbosity = out.add_mutually_exclusive_group()
    verbosity.add_argument("--verbose", "-v", action="store_true", help="debug log and tracebacks")
    verbosity.add_argument("--quiet", "-q", action="store_true", help="errors and the summary only")
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with cli_logging(args.verbose, args.quiet, fmt="%(message)s"):
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    try:
        result = push(
            args.paths,
            server=args.server,
            port=args.port,
            user=args.user,
            session_key=args.session_key or os.environ.get(SESSION_KEY_ENV) or None,
            group=args.group,
            config=args.config,
            dataset=args.dataset,
            project=args.project,
            mode=args.mode,
            provenance_on=not args.no_provenance,
            dry_run=args.dry_run,
            convert=args.convert,
            convert_out=args.convert_out,
            chunk_size=max(1, int(args.chunk_size * 2**20)),
            tile=args.tile,
            retries=args.retries,
            parallel=max(1, args.parallel),
            progress=make_progress(quiet=args.quiet),
            interactive=sys.stdin.isatty(),
        )
    except PushError as exc:
        if args.verbose:
            log.debug("traceback", exc_info=True)
        print(f"omero-push: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("omero-push: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unexpected server reply: still one line by default
        if args.verbose:
            log.exception("unexpected error")
        print(
            f"omero-push: error: {exc.__class__.__name__}: {exc} (re-run with --verbose for details)",
            file=sys.stderr,
        )
        return 1
    if result.dry_run:
        print(format_plan(result.plan, args.mode, not args.no_provenance))
        print(result.summary())
    else:
        print(result.summary())
    if result.plan.skipped and not result.dry_run:
        print(
            f"omero-push: error: {len(result.plan.skipped)} file(s) were not pushed (see above)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
