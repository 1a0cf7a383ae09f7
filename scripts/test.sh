#!/usr/bin/env bash
# Installs the project into a virtual environment and runs the linter and the whole test suite.
# Usage: bash scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
# torch first, pinned to the CPU build on disk, so the project's range never pulls a CUDA build.
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q -e ".[dev]"
"$VENV/bin/ruff" check .

# The tests marked `cluster` run on a one-node SLURM cluster, PostgreSQL and an MLflow server on this machine:
# scripts/local_cluster.sh starts them (root only: it installs packages and runs slurmd) and, when nothing of it
# ran before, stops what it started once the tests end, passed or failed (test sessions running at the same time
# share it; the last one stops it). OLMO_TEST_CLUSTER=1 (the default under CI=true or as root) starts it, and
# under CI a failure to start fails the run; 0 leaves it alone (the cluster tests then skip unless one runs).
default_cluster=0
if [ "${CI:-}" = true ] || [ "$(id -u)" = 0 ]; then default_cluster=1; fi
if [ "${OLMO_TEST_CLUSTER:-$default_cluster}" = 1 ]; then
    OLMO_MLFLOW_BIN="$(cd "$VENV" && pwd)/bin/mlflow"
    export OLMO_MLFLOW_BIN
    cluster_rc=0
    bash scripts/local_cluster.sh status >/dev/null 2>&1 || cluster_rc=$?
    # Started here, or by another test session still running: share it (a lease); the last session stops it.
    if [ "$cluster_rc" = 3 ] || bash scripts/local_cluster.sh in-use; then
        export OLMO_CLUSTER_LEASE=$$
        trap 'bash scripts/local_cluster.sh stop' EXIT
    fi
    if { [ "$cluster_rc" != 0 ] || [ -n "${OLMO_CLUSTER_LEASE:-}" ]; } && ! bash scripts/local_cluster.sh start >/dev/null; then
        [ "${CI:-}" = true ] && { echo "test.sh: the local cluster did not start" >&2; exit 1; }
        echo "test.sh: the local cluster did not start; the cluster tests will skip" >&2
    fi
fi
"$VENV/bin/python" -m pytest -q "$@"
