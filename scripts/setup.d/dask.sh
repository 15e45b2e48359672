#!/usr/bin/env bash
# The [dask] extra (dask, distributed, dask-jobqueue): the converter's --scheduler/--cluster and
# the tests that start a real Dask scheduler and workers (tests/test_dask_cluster.py).
# $1: the venv's python. Idempotent: a second run only looks the modules up (~0.2 s).
set -euo pipefail
PY=${1:-.venv/bin/python}
cd "$(dirname "$0")/../.."
have() {  # find_spec, not import: distributed takes a second to import
  "$PY" -c 'import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ("dask", "distributed", "dask_jobqueue")))' 2>/dev/null
}
have && exit 0
echo "[setup] installing the [dask] extra (dask, distributed, dask-jobqueue)" >&2
"$PY" -m pip install --disable-pip-version-check --quiet -e ".[dask]" 2>&1 \
  | grep -v -e '^WARNING: Location' -e 'python-bioformats' -e "dependency resolver does not currently" || true
have || { echo "[setup] dask.sh: the [dask] extra did not install; the Dask tests will be skipped" >&2; exit 0; }
