#!/usr/bin/env bash
# README command 2: install everything, lint, type-check and run the whole test suite
# against a real server (FerretDB here; MIGRATION_TEST_MONGO_URL or Docker if you have them).
# Extra arguments go to pytest. The long variants (marker "slow") are left out unless asked
# for: scripts/test.sh -m slow, or scripts/test.sh -m "slow or not slow" for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH"
ruff check .
ruff format --check .
mypy
exec python -m pytest -m "not slow" "$@"
