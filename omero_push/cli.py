"""``omero-push``: the command line over :func:`omero_push.push.push`.

The only module that configures logging or prints.  Library errors (typed, see ``errors.py``)
become one line on stderr and an exit status; a traceback appears only with ``--verbose``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from omero_push import report
from omero_push.config import DEFAULT_PORT, load_config
from omero_push.errors import ConfigError, PushError
from omero_push.plan import ImageOverrides, format_plan, parse_kv
from omero_push.progress import make_progress
from omero_push.push import MODES, push
from omero_push.upload import DEFAULT_CHUNK
from posdir2ometiff import __version__
from posdir2ometiff.argtypes import float_in, int_in, port, tile_wxh
from posdir2ometiff.logconfig import cli_logging
from posdir2ometiff.startup import freeze_imports

log = logging.getLogger("omero_push.cli")

SESSION_KEY_ENV = "OMERO_SESSION_KEY"


DESCRIPTION = (
    "Put OME-TIFFs into OMERO with description, tags, key-value pairs, provenance and "
    "OMERO.tables. Re-running creates nothing new; an interrupted push is completed by "
    "running it again. The password comes from a stored 'omero login' session, OMERO_PASSWORD "
    "or a prompt, never from the command line."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="omero-push",
        description=DESCRIPTION,
        epilog="'omero-push setup-ice' installs zeroc-ice 3.6.5 and omero-py into this Python "
        "(needed to push; see --help there). 'omero push' is the same command inside OMERO's CLI, "
        "on the session of 'omero login'.",
    )
    add_connection_arguments(p)
    add_push_arguments(p)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def add_connection_arguments(p: argparse.ArgumentParser) -> None:
    """How the standalone ``omero-push`` logs in (``omero push`` uses OMERO's login arguments)."""
    conn = p.add_argument_group("connection")
    conn.add_argument("--server", "-s", help="OMERO host (or 'host:' in --config)")
    conn.add_argument(
        "--port",
        "-p",
        type=port,
        help=f"OMERO port (default: omero-py's, {DEFAULT_PORT} for a host, 4063 for tcp://host)",
    )
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
        help="YAML file with host/port/username/group/web_url (pyOmeroUpload's omero_conn: "
        "keys work)",
    )


def add_push_arguments(p: argparse.ArgumentParser, *, quiet: bool = True) -> None:
    """Everything but the login: shared by ``omero-push`` and the ``omero push`` plug-in.

    ``quiet=False`` leaves out ``-q``, which OMERO's ``add_login_arguments`` already defines.
    """
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="converter output folder (with manifest.json), OME-TIFF file, or with --convert a "
        "raw experiment folder",
    )
    target = p.add_argument_group("target (as omero import)")
    target.add_argument(
        "--dataset",
        "-d",
        help="Dataset ID (a number, as omero import -d), else a dataset name (found or "
        "created); default: the manifest's",
    )
    target.add_argument(
        "--target",
        "-T",
        help="omero import's template: Dataset:name:NAME, Dataset:id:ID, "
        "Project:name:P/Dataset:name:D; name: may be +name (newest, default), -name (oldest), "
        "%%name (only if unique), @name (always a new one)",
    )
    target.add_argument("--name", "-n", help="image name (every image of the push)")
    target.add_argument("--description", "-x", help="image description (every image)")
    target.add_argument(
        "--annotation-ns",
        action="append",
        default=[],
        help="namespace of the next --annotation-text (as omero import)",
    )
    target.add_argument(
        "--annotation-text",
        action="append",
        default=[],
        help="a comment on every image (repeatable; paired with --annotation-ns in order)",
    )
    target.add_argument(
        "--tag", action="append", default=[], metavar="TEXT", help="tag every image (repeatable)"
    )
    target.add_argument(
        "--kv",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="key-value pair on every image (repeatable)",
    )
    # No short option: -P would differ from -p (port) only by case.
    target.add_argument(
        "--project",
        help="project name (found or created); default: the project the experiment's metadata "
        "names (the manifest's omero_project, e.g. the log's 'Omero project:'), which is "
        "created when missing; --dry-run shows it",
    )
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
    tune.add_argument(
        "--tile",
        type=tile_wxh(),
        metavar="PX",
        help="tile size for pixels mode: one number as the converter's --tile, or WxH "
        "(default: the server's tile size)",
    )
    tune.add_argument(
        "--parallel",
        type=int_in(1, 64),
        default=2,
        help="files (import) or images (pixels) in flight at once (default %(default)s)",
    )
    tune.add_argument(
        "--retries",
        type=int_in(0, 1000),
        default=5,
        help="reconnects on connection loss (default %(default)s)",
    )
    out = p.add_argument_group("output")
    out.add_argument(
        "--dry-run", action="store_true", help="print the plan and the target; send nothing"
    )
    out.add_argument(
        "--output",
        choices=("text", "json"),
        default="text",
        help="json: one JSON document on stdout (ids, statuses, counts) for scripts",
    )
    out.add_argument(
        "--web-url",
        help="OMERO.web address, for links to the images (or web_url: in --config)",
    )
    out.add_argument("--log-file", metavar="FILE", help="also write a debug log to FILE")
    out.add_argument("--verbose", "-v", action="store_true", help="debug log and tracebacks")
    if quiet:
        out.add_argument("--quiet", "-q", action="store_true", help="errors and the summary only")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``omero-push`` console script; returns the exit status.

    Without ``argv`` (the console script, ``python -m``) the process is the command line's, and it
    sets the garbage collector aside for the imports (posdir2ometiff's startup.py); a program that
    passes ``argv`` keeps its process as it is."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["setup-ice"]:  # installs what the [omero] extra cannot on some Pythons
        from omero_push import ice

        return ice.main(argv[1:])
    args = build_parser().parse_args(argv)
    if program:
        freeze_imports()
    return run(args)


def run(args: argparse.Namespace, conn: Any = None) -> int:
    """Do the push ``args`` describe; ``conn`` is an open connection to use (``omero push``)."""
    quiet = args.quiet or args.output == "json"
    if args.log_file:
        try:
            open(args.log_file, "a", encoding="utf-8").close()
        except OSError as exc:
            print(f"omero-push: error: {args.log_file}: cannot write the log file ({exc.strerror})",
                  file=sys.stderr)
            return 2
    with cli_logging(args.verbose, quiet, fmt="%(message)s", log_file=args.log_file):
        log.debug("omero-push %s, Python %s, omero-py %s", __version__, sys.version.split()[0],
                  _omero_py_version())
        return _main(args, conn)


def _omero_py_version() -> str:
    """For bug reports in the debug log (never imports omero, which needs Ice)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("omero-py")
    except PackageNotFoundError:
        return "not installed"


def _overrides(args: argparse.Namespace) -> ImageOverrides:
    """-n/-x/--annotation-*/--tag/--kv as what every image gets."""
    if len(args.annotation_ns) > len(args.annotation_text):
        raise ConfigError("--annotation-ns without an --annotation-text after it")
    # As omero import: the i-th text goes with the i-th namespace, if there is one.
    comments = tuple(args.annotation_text)
    namespaced = tuple(
        (ns, text) for ns, text in zip(args.annotation_ns, args.annotation_text, strict=False)
    )
    return ImageOverrides(
        name=args.name,
        description=args.description,
        tags=tuple(args.tag),
        kv_pairs=tuple(parse_kv(kv) for kv in args.kv),
        comments=comments[len(namespaced) :],
        ns_comments=namespaced,
    )


def _main(args: argparse.Namespace, conn: Any = None) -> int:
    as_json = args.output == "json"
    try:
        web_url = args.web_url or _config_web_url(getattr(args, "config", None))
        standalone = conn is None
        result = push(
            args.paths,
            conn=conn,
            server=args.server if standalone else None,
            port=args.port if standalone else None,
            user=args.user if standalone else None,
            session_key=(args.session_key or os.environ.get(SESSION_KEY_ENV) or None)
            if standalone
            else None,
            group=args.group if standalone else None,
            config=args.config if standalone else None,
            dataset=args.dataset,
            project=args.project,
            target=args.target,
            overrides=_overrides(args),
            mode=args.mode,
            provenance_on=not args.no_provenance,
            dry_run=args.dry_run,
            convert=args.convert,
            convert_out=args.convert_out,
            chunk_size=max(1, int(args.chunk_size * 2**20)),
            tile=args.tile,
            retries=args.retries,
            parallel=max(1, args.parallel),
            progress=make_progress(quiet=args.quiet or as_json),
            interactive=sys.stdin.isatty(),
        )
    except PushError as exc:
        if args.verbose:
            log.debug("traceback", exc_info=True)
        print(f"omero-push: error: {exc}", file=sys.stderr)
        if as_json:
            print(json.dumps(report.error_json(exc), indent=2))
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
    if as_json:
        print(json.dumps(report.result_json(result, web_url), indent=2))
    elif result.dry_run:
        print(format_plan(result.plan, args.mode, not args.no_provenance))
        if result.plan.project and not args.project and not args.target:
            print(f"project {result.plan.project!r}: from the experiment's metadata (found or "
                  "created; --project NAME to choose another)")
        print(result.summary())
    else:
        print(result.summary())
        for line in report.web_links(result, web_url):
            print(line)
    if result.plan.skipped and not result.dry_run:
        print(
            f"omero-push: error: {len(result.plan.skipped)} file(s) were not pushed (see above)",
            file=sys.stderr,
        )
        return 1
    return 0


def _config_web_url(config: str | None) -> str | None:
    """``web_url:`` (or ``omero.web:``) of the --config file, for links to the images."""
    if not config:
        return None
    web = load_config(config).get("web_url")
    return str(web) if web else None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
