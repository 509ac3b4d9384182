#!/usr/bin/env python3
"""A real local MongoDB-compatible server: FerretDB 1.24.2, built and started by us.

The command line of :mod:`migration.testserver` (where the server code lives, so
that ``migration rehearse`` can start the same server). Used by the test suite
(``tests/conftest.py``), by the README's demo command and by the benchmarks.

    python scripts/testdb.py install            # build FerretDB into the cache (once)
    python scripts/testdb.py start [--port N]   # start it detached, print its URL
    python scripts/testdb.py stop               # stop what start started
    python scripts/testdb.py url                # print the URL of the running server

Backends: ``postgresql`` (default; Debian's PostgreSQL, started privately under
the server folder) or ``sqlite``; see :mod:`migration.testserver` for why.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

PROJECT = Path(__file__).resolve().parent.parent
DEFAULT_SERVER_DIR = PROJECT / ".cache" / "testdb"

try:
    from migration import testserver
except ImportError:  # run by a Python without the package installed: use the checkout
    sys.path.insert(0, str(PROJECT))
    from migration import testserver

# Re-exported: tests/conftest.py, tests/reliability and bench/ use these names.
FERRETDB_MODULE = testserver.FERRETDB_MODULE
FERRETDB_VERSION = testserver.FERRETDB_VERSION
ID_LOOKUP_INDEX_SQL = testserver.ID_LOOKUP_INDEX_SQL
Server = testserver.Server
cache_dir = testserver.cache_dir
ferretdb_binary = testserver.ferretdb_binary
free_port = testserver.free_port

F = TypeVar("F", bound=Callable[..., Any])


def _exits(fn: F) -> F:
    """As before the move: a server that cannot start ends the script (SystemExit)."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except testserver.TestServerError as exc:
            raise SystemExit(f"testdb: {exc}") from exc

    return wrapper  # type: ignore[return-value]


install = _exits(testserver.install)
start = _exits(testserver.start)
_pg_bin = _exits(testserver.pg_bin)


def _wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float, what: str) -> None:
    _exits(testserver.wait_port)(port, proc, seconds, what)


def log(msg: str) -> None:
    testserver.say(msg)


def cmd_start(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    record = testserver.read_record(directory)
    if record is not None and testserver.running(record):
        print(record["url"])
        log(f"already running (pid {record['pid']})")
        return 0
    server = start(directory, args.port, args.backend, detach=True)
    server.record()
    log(f"FerretDB {FERRETDB_VERSION} ({server.backend}) listening at {server.url}")
    print(server.url)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    if not testserver.stop_recorded(Path(args.dir).resolve()):
        log("not running")
        return 0
    log("stopped")
    return 0


def cmd_url(args: argparse.Namespace) -> int:
    record = testserver.read_record(Path(args.dir).resolve())
    if record is None:
        log("not running; start it with: python scripts/testdb.py start")
        return 1
    print(record["url"])
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0],
        epilog="Example, a server for your own data: python scripts/testdb.py start, then "
        "mongorestore or `migration run` against the URL it prints; python scripts/testdb.py stop. "
        "To try a plan on a copy of a backup, `migration rehearse PLAN --backup PATH` starts "
        "one of these servers by itself.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "install",
        help="build FerretDB into the cache folder (once)",
        description=f"Build FerretDB {FERRETDB_VERSION} from the Go module proxy into "
        f"{ferretdb_binary().parent}.",
    )
    helps = {
        "start": "start a server in the background and print its URL (idempotent)",
        "stop": "stop the server that start started in --dir",
        "url": "print the URL of the server running in --dir",
    }
    for name, text in helps.items():
        p = sub.add_parser(
            name,
            help=text,
            description=text[0].upper() + text[1:] + ".",
        )
        p.add_argument(
            "--dir",
            default=str(DEFAULT_SERVER_DIR),
            help="server folder: its data, logs and server.json live here (default: %(default)s)",
        )
        if name == "start":
            p.add_argument(
                "--port",
                type=int,
                default=None,
                help="loopback port to listen on (default: a free one)",
            )
            p.add_argument(
                "--backend",
                choices=list(testserver.BACKENDS),
                default=None,
                help="FerretDB backend (default: $MIGRATION_TESTDB_BACKEND or postgresql)",
            )
    args = parser.parse_args(argv)
    if args.command == "install":
        print(install())
        return 0
    return {"start": cmd_start, "stop": cmd_stop, "url": cmd_url}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
