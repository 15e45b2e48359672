#!/usr/bin/env bash
# Slurm and munge (Debian's slurm-wlm, munge) for tests/test_slurm_cluster.py, which starts a
# throw-away single-node Slurm (tests/slurm_local.py) and converts through --cluster slurm.
# Only the packages are installed: no daemon is started or enabled here (the test starts its own
# munged/slurmctld/slurmd with a private config, key and ports, and stops them).
# Idempotent; without root or apt it says why in one line and the test is skipped.
set -euo pipefail
need=(munged mungekey slurmctld slurmd sbatch sinfo squeue scancel)
missing=()
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "[setup] slurm.sh: not root or no apt-get; Slurm tests will be skipped (missing: ${missing[*]})" >&2
  exit 0
fi
echo "[setup] installing slurm-wlm and munge (for the --cluster slurm test)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null \
  || { echo "[setup] slurm.sh: apt-get install slurm-wlm munge failed; Slurm tests will be skipped" >&2; exit 0; }
