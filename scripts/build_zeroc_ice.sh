#!/usr/bin/env bash
# Build (once) and cache a zeroc-ice 3.6.5 wheel for the running Python; prints its path.
#
# The logic (download the sdist, the two source fixes Python >= 3.11 needs, build, cache in
# ~/.cache/posdir2ometiff/wheels or $POSDIR2OMETIFF_WHEEL_CACHE) lives in the package, as
# `omero-push setup-ice` (omero_push/ice.py); this script runs that file directly because the
# set-up calls it before the project is installed (the module is stdlib-only).
#
# Usage: scripts/build_zeroc_ice.sh PYTHON   -> prints the path of the cached wheel
set -euo pipefail
PY=${1:-python3}
exec "$PY" "$(dirname "$0")/../omero_push/ice.py" --python "$PY" --build-only
