#!/usr/bin/env bash
# podman (with the runc runtime) for building and smoke-testing the container image
# (scripts/build_image.sh, tests/test_image.py); debootstrap makes the Debian base image where no
# registry is reachable. Debian's podman works as root with runc; containers.conf sets runc and
# the nofile/nproc ulimits OMERO's own compose example sets (ome/docker-example-omero).
set -euo pipefail
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  command -v podman >/dev/null 2>&1 || echo "[setup.d/podman] not root or no apt: podman not installed; the image test will be skipped" >&2
  exit 0
fi
need=()
for cmd in podman:podman runc:runc debootstrap:debootstrap; do
  command -v "${cmd%%:*}" >/dev/null 2>&1 || need+=("${cmd#*:}")
done
if [ "${#need[@]}" -gt 0 ]; then
  echo "[setup.d/podman] installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
fi
conf=/etc/containers/containers.conf
if ! grep -q 'posdir2ometiff' "$conf" 2>/dev/null; then
  mkdir -p /etc/containers
  [ -e "$conf" ] && cp "$conf" "$conf.orig"
  cat >"$conf" <<'CONF'
# written by posdir2ometiff scripts/setup.d/podman.sh (the original, if any, is containers.conf.orig)
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
fi
