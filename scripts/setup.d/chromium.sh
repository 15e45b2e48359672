#!/usr/bin/env bash
# Debian's chromium, headless, for the test that opens OUT/report.html and checks that it renders
# with its images (tests/test_report.py). Skipped (one line, exit 0) where it cannot be installed.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup.d/chromium] not root or no apt: chromium not installed; the report rendering test will be skipped" >&2
  exit 0
fi
echo "[setup.d/chromium] installing chromium" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
  || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }
