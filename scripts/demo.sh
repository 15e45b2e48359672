#!/usr/bin/env bash
# Set up (if needed), generate a synthetic experiment in the lab's layout, and convert it.
# Output: demo-experiment/ (pos001..pos003, PNGs, Acq/log files) and demo-out/ (OME-TIFFs,
# manifest.json, experiment.h5). Extra arguments go to the converter (e.g. --workers 1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
rm -rf demo-experiment
.venv/bin/posdir2ometiff demo demo-experiment --num-positions 3 -z 5 -t 4 --size 1024
.venv/bin/posdir2ometiff demo-experiment -o demo-out "$@"
echo "demo done: $(ls demo-out)"
