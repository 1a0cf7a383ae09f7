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
"$VENV/bin/python" -m pytest -q "$@"
