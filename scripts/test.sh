#!/usr/bin/env bash
# README command 2: install everything, lint, type-check and run the whole test suite
# against a real server (FerretDB here; MIGRATION_TEST_MONGO_URL or Docker if you have them).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
exec python -m pytest "$@"
