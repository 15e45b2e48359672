#!/usr/bin/env bash
# Build the container image (docker/Dockerfile) with Docker, or with podman where no Docker daemon
# runs. Where no registry is reachable, the Debian base image is made with debootstrap (from the
# Debian mirror this host's apt uses) and tagged as the Dockerfile's FROM name.
#
# Usage: scripts/build_image.sh [--jupyter] [--tag NAME]
#   --jupyter   also build the Jupyter flavour (NAME:jupyter), which serves notebooks/
#   --tag NAME  image name (default posdir2ometiff; the runtime image is NAME:latest)
#   --base-only only make sure the Debian base image exists (pull or debootstrap)
# Env:   ENGINE=docker|podman       force an engine
#        PIP_CERT=/path/ca.crt      CA file of a TLS-inspecting proxy (passed as a build secret)
#        PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS (else this host's `pip config`)
#        POSDIR2OMETIFF_WHEEL_CACHE  where scripts/setup.sh keeps the zeroc-ice wheel
# Prints the runtime image's name on its last line.
#
# The dependencies' stages are tagged too (NAME:deps, NAME:jupyter-deps): they are the build cache
# that makes a rebuild after a code change take seconds. After a build, the untagged images the
# rebuild left behind (the previous NAME:latest, the stages' leftovers) are removed, selected by the
# label every stage of docker/Dockerfile carries; without that, each build after a code change kept
# about 1.5 GB until the disk was full. `$ENGINE rmi NAME:deps NAME:jupyter-deps` drops the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { printf '[build_image] %s\n' "$*" >&2; }
TAG=posdir2ometiff
JUPYTER=0
BASE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --jupyter) JUPYTER=1 ;;
    --tag) TAG=$2; shift ;;
    --base-only) BASE_ONLY=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "build_image.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
BASE_IMAGE=$(sed -n 's/^ARG BASE_IMAGE=//p' docker/Dockerfile)

# ---- engine: a running Docker daemon, else podman
ENGINE=${ENGINE:-}
if [ -z "$ENGINE" ]; then
  if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then ENGINE=docker
  elif command -v podman >/dev/null 2>&1; then ENGINE=podman
  else echo "build_image.sh: neither a Docker daemon nor podman is available" >&2; exit 3
  fi
fi
log "engine: $ENGINE"

# ---- base image: present, pulled, or made with debootstrap
if ! "$ENGINE" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  if ! timeout 60 "$ENGINE" pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
      || { echo "build_image.sh: cannot pull $BASE_IMAGE and cannot debootstrap it (needs root and debootstrap)" >&2; exit 3; }
    # The mirror the host's apt uses (deb822 or one-line sources), else deb.debian.org.
    mirror=$(cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
             | grep -E '^(URIs:|deb )' | grep -o -E 'https?://[^ ]+/debian/?( |$)' | head -n1 | tr -d ' ' || true)
    mirror=${mirror:-http://deb.debian.org/debian}
    cache=${XDG_CACHE_HOME:-$HOME/.cache}/posdir2ometiff
    tarball=$cache/debian-bookworm-minbase.tar
    if [ ! -s "$tarball" ]; then
      log "no registry: making $BASE_IMAGE with debootstrap from $mirror (a few minutes, cached)"
      root=$(mktemp -d)
      trap 'rm -rf "$root"' EXIT
      debootstrap --variant=minbase bookworm "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -n 5 "$root.log" >&2; echo "build_image.sh: debootstrap failed (log: $root.log)" >&2; exit 3; }
      rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
      mkdir -p "$cache"
      tar -C "$root" -cf "$tarball.partial" . && mv "$tarball.partial" "$tarball"
      rm -rf "$root"; trap - EXIT
    fi
    "$ENGINE" import -q "$tarball" "$BASE_IMAGE" >/dev/null
    log "imported the debootstrapped Debian as $BASE_IMAGE"
  fi
fi
[ "$BASE_ONLY" = 1 ] && { echo "$BASE_IMAGE"; exit 0; }

# ---- the zeroc-ice wheel scripts/setup.sh built, so the image does not compile Ice again
wheels=${POSDIR2OMETIFF_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/posdir2ometiff/wheels}
# Debian bookworm's python3 is 3.11: only a cp311 linux wheel fits. A wheel someone put into
# docker/wheels/ by hand is used as it is; the one copied here is removed after the build.
copied=
if ! ls docker/wheels/zeroc_ice-3.6.5-*.whl >/dev/null 2>&1; then
  for w in "$wheels"/zeroc_ice-3.6.5-cp311-*linux*x86_64.whl; do
    if [ -f "$w" ] && [ "$(uname -m)" = x86_64 ]; then
      # -p: the same mtime every time, so the build cache keeps every layer after this COPY
      cp -p "$w" docker/wheels/ && copied=docker/wheels/$(basename "$w")
      log "using cached $(basename "$w")"; break
    fi
  done
fi
[ -n "$copied" ] || ls docker/wheels/zeroc_ice-3.6.5-*.whl >/dev/null 2>&1 \
  || log "no zeroc-ice wheel: the image build compiles it (about 10 minutes)"

# ---- the host's pip settings: proxy CA as a secret, index settings as build arguments
args=(--network host)
secret_file=$(mktemp)
trap 'rm -f "$secret_file" ${copied:+"$copied"}' EXIT
if [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ]; then cp "$PIP_CERT" "$secret_file"; log "pip CA: $PIP_CERT"; fi
args+=(--secret "id=pipcert,src=$secret_file")
pip_setting() {  # env var first, then `pip config` (global/user/site files)
  local env=$1 key=$2 val=${!1:-}
  if [ -z "$val" ] && command -v python3 >/dev/null 2>&1; then
    val=$(python3 -m pip config get "global.$key" 2>/dev/null || true)
  fi
  printf '%s' "$val"
}
for pair in PIP_INDEX_URL:index-url PIP_EXTRA_INDEX_URL:extra-index-url PIP_FIND_LINKS:find-links; do
  val=$(pip_setting "${pair%%:*}" "${pair#*:}")
  [ -n "$val" ] || continue
  # Local indexes (file:// or a folder) are visible in the build only as podman volumes.
  keep=()
  for item in $val; do
    path=${item#file://}
    if [ "$path" != "$item" ] || [ "${item#/}" != "$item" ]; then
      if [ "$ENGINE" = podman ] && [ -e "$path" ]; then
        # mount the index's top folder (its pages may link to files beside "simple/"), once
        top=/$(echo "$path" | cut -d/ -f2-3)
        case " ${mounted:-} " in *" $top "*) ;; *) args+=(--volume "$top:$top:ro"); mounted="${mounted:-} $top" ;; esac
        keep+=("$item")
      fi
    else
      keep+=("$item")
    fi
  done
  [ "${#keep[@]}" -gt 0 ] && args+=(--build-arg "${pair%%:*}=${keep[*]}")
done

build() {  # target, tag
  log "building $2 (target $1)"
  "$ENGINE" build "${args[@]}" -f docker/Dockerfile --target "$1" -t "$2" . >&2
}
build deps "$TAG:deps"
build runtime "$TAG:latest"
if [ "$JUPYTER" = 1 ]; then
  build jupyter-deps "$TAG:jupyter-deps"
  build jupyter "$TAG:jupyter"
fi
# Untagged images of ours only (the label), never an image a container uses (prune keeps those).
label=$(sed -n 's/^LABEL \(org\.opencontainers\.image\.title="[^"]*"\).*/\1/p' docker/Dockerfile | tr -d '"')
[ -n "$label" ] || { echo "build_image.sh: docker/Dockerfile has no org.opencontainers.image.title label" >&2; exit 3; }
removed=$("$ENGINE" image prune -f --filter "label=$label" | grep -c . || true)
log "removed $removed untagged image(s) labelled $label left by earlier builds"
echo "$TAG:latest"
