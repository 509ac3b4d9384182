#!/usr/bin/env bash
# Installs what migration, its tests and its demo need, idempotently:
# a virtualenv in .venv with the package (editable) and test tools, PostgreSQL
# from Debian's packages when missing, and FerretDB 1.24.2 built into the cache.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11+ is needed ($PYTHON is $("$PYTHON" --version 2>&1))" >&2
  exit 2
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'

backend=${MIGRATION_TESTDB_BACKEND:-postgresql}
if [ "$backend" = postgresql ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null; then
  echo "bootstrap: installing PostgreSQL (FerretDB's backend)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
fi
# Chromium renders the HTML run report in a test (tests/test_report_browser.py).
if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then
  echo "bootstrap: installing Chromium (the HTML report's browser test)" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  fi || echo "bootstrap: Chromium could not be installed; the browser test will skip saying so" >&2
fi
.venv/bin/python scripts/testdb.py install >/dev/null
