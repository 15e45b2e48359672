#!/usr/bin/env bash
# The Glacier2 router the OMERO stand-in runs behind (tests/omero_server, issue 8): Debian's
# zeroc-glacier2 (3.7, wire-compatible with omero-py's Ice 3.6). Installed with apt when root;
# otherwise one line says why not and the stand-in runs without a router (its router tests skip).
set -u
if command -v glacier2router >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "setup: installing zeroc-glacier2 (the OMERO stand-in's router)"
  apt-get update -qq >/dev/null && apt-get install -y -qq zeroc-glacier2 >/dev/null && exit 0
  echo "setup: apt-get install zeroc-glacier2 failed: the stand-in runs without Glacier2"
  exit 0
fi
echo "setup: no glacier2router and not root: the stand-in runs without Glacier2 (router tests skip)"
exit 0
