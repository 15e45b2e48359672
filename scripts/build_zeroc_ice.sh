#!/usr/bin/env bash
# Build (once) and cache a zeroc-ice 3.6.5 wheel for the running Python.
#
# Why: omero-py needs zeroc-ice >=3.6.5,<3.7 but PyPI only has the 3.6.5 sdist, which does not
# compile on Python >= 3.11 as shipped. Two one-line source fixes make it build; the wheel is then
# cached outside the repository so later set-ups take seconds.
#
# Usage: scripts/build_zeroc_ice.sh PYTHON   -> prints the path of the cached wheel
set -euo pipefail
PY=${1:-python3}
CACHE=${POSDIR2OMETIFF_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/posdir2ometiff/wheels}
mkdir -p "$CACHE"
tag=$("$PY" -c 'import sys,sysconfig; print(f"cp{sys.version_info[0]}{sys.version_info[1]}-" + sysconfig.get_platform().replace("-","_").replace(".","_"))')
existing=$(ls "$CACHE"/zeroc_ice-3.6.5-*"${tag%%-*}"*.whl 2>/dev/null | head -n1 || true)
if [ -n "$existing" ]; then
  echo "$existing"
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "building zeroc-ice 3.6.5 for $tag (about 10 minutes on 2 cores)..." >&2
"$PY" -m pip download --quiet --no-deps --no-binary :all: zeroc-ice==3.6.5 -d "$work" >&2
tar -xzf "$work"/zeroc-ice-3.6.5.tar.gz -C "$work"
src="$work/zeroc-ice-3.6.5"
# Fix 1: <eval.h> was removed from CPython's public headers in 3.11.
sed -i '/#include <eval.h>/d' "$src/src/Slice.cpp"
# Fix 2: PyThreadState's frame member is private since 3.11; use the public accessor.
sed -i 's/PyThreadState_GET()->frame/PyEval_GetFrame()/g' "$src/src/Util.cpp"
grep -q 'PyEval_GetFrame()' "$src/src/Util.cpp" || { echo "zeroc-ice patch did not apply" >&2; exit 1; }
"$PY" -m pip wheel --quiet --no-deps -w "$work/dist" "$src" >&2
whl=$(ls "$work"/dist/zeroc_ice-*.whl)
tmpname="$CACHE/.$(basename "$whl").partial"
cp "$whl" "$tmpname"
mv "$tmpname" "$CACHE/$(basename "$whl")"
echo "$CACHE/$(basename "$whl")"
