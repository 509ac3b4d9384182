"""A real local MongoDB-compatible server: FerretDB 1.24.2, built and started by us.

The throwaway server of ``migration rehearse``, of the test suite
(``tests/conftest.py``), of the README's demo and of the benchmarks; no Docker
needed. ``scripts/testdb.py`` is its command line (install, start, stop, url).

Backends: ``postgresql`` (default; Debian's PostgreSQL, started privately under
the server folder) or ``sqlite``. PostgreSQL is the default because it pushes
``{_id: X, field: scalar}`` filters down to an index lookup, which keeps guarded
per-document updates linear; SQLite pushes down only ``{_id: X}`` exactly, so each
guarded update scans the whole collection (measured in README "Testing").

Why not ``go install ...@v1.24.2`` alone: the module as published lacks
``build/version/version.txt``, and the binary ``go install`` produces panics at
start. We fetch the same module through the Go proxy, add that file, and
``go build`` it.

Only the standard library here: the script runs this before anything else is
installed, and importing it never costs a rehearsal pymongo's start-up.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from migration.errors import MigrationError

FERRETDB_MODULE = "github.com/FerretDB/FerretDB"
FERRETDB_VERSION = "v1.24.2"
BACKENDS = ("postgresql", "sqlite")
RECORD_NAME = "server.json"


class TestServerError(MigrationError):
    """The local server cannot be built or started (the message says what is missing)."""

    __test__ = False  # not a pytest test class, despite the name


def cache_dir() -> Path:
    base = os.environ.get("MIGRATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "migration"
    )
    return Path(base)


def ferretdb_binary() -> Path:
    return cache_dir() / f"ferretdb-{FERRETDB_VERSION}" / "ferretdb"


def say(msg: str) -> None:
    print(f"testdb: {msg}", file=sys.stderr, flush=True)


def install() -> Path:
    """Build FerretDB into the cache folder unless it is already there."""
    binary = ferretdb_binary()
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise TestServerError("Go is needed to build FerretDB (https://go.dev/dl/); not on PATH")
    say(f"building FerretDB {FERRETDB_VERSION} (once; cached in {binary.parent})")
    out = subprocess.run(
        [go, "mod", "download", "-json", f"{FERRETDB_MODULE}@{FERRETDB_VERSION}"],
        check=True,
        capture_output=True,
        text=True,
        cwd=tempfile.gettempdir(),
    )
    module_dir = Path(json.loads(out.stdout)["Dir"])
    with tempfile.TemporaryDirectory(prefix="ferretdb-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(module_dir, src)
        for path in src.rglob("*"):
            path.chmod(path.stat().st_mode | 0o200)
        src.chmod(src.stat().st_mode | 0o200)
        (src / "build" / "version" / "version.txt").write_text(FERRETDB_VERSION + "\n")
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".partial")
        subprocess.run([go, "build", "-o", str(partial), "./cmd/ferretdb"], check=True, cwd=src)
        partial.replace(binary)
    return binary


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], seconds: float, what: str) -> None:
    """Return once ``proc`` listens on ``port``; raise if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestServerError(f"{what} exited with code {proc.returncode} during start")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise TestServerError(f"{what} did not listen on port {port} within {seconds:g}s")


def pg_bin(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / name).exists():
            return str(root / name)
    raise TestServerError(
        f"PostgreSQL's {name} not found; install Debian's postgresql package "
        "(apt-get install -y postgresql) or use the sqlite backend"
    )


def _as_pg_user(argv: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; CI runs as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


def _stop_postgres(data: Path | str) -> None:
    subprocess.run(
        _as_pg_user([pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
        capture_output=True,
    )


@dataclass
class Server:
    url: str
    port: int
    directory: Path
    backend: str
    ferretdb: subprocess.Popen[bytes] | None = None
    postgres_data: Path | None = None

    def stop(self) -> None:
        if self.ferretdb is not None and self.ferretdb.poll() is None:
            self.ferretdb.terminate()
            try:
                self.ferretdb.wait(10)
            except subprocess.TimeoutExpired:
                self.ferretdb.kill()
                self.ferretdb.wait()
        if self.postgres_data is not None:
            _stop_postgres(self.postgres_data)

    def record(self) -> Path:
        """Write ``server.json`` in the server folder, so :func:`stop_recorded` (and
        ``scripts/testdb.py stop --dir``) can stop it from another process."""
        assert self.ferretdb is not None
        path = self.directory / RECORD_NAME
        path.write_text(
            json.dumps(
                {
                    "pid": self.ferretdb.pid,
                    "url": self.url,
                    "backend": self.backend,
                    "postgres_data": str(self.postgres_data) if self.postgres_data else None,
                }
            )
        )
        return path


# FerretDB 1.24 pushes {_id: X} down as `_jsonb->'_id' @> X`, which its own btree
# index on `_jsonb->'_id'` cannot answer: every lookup by _id (each guarded update
# of mongo.transform) is then a sequential scan, and a transform is quadratic in
# the collection size. A GIN index on the same expression answers `@>`; this
# event trigger adds one to every collection FerretDB creates. It makes the test
# server find documents by _id through an index, as MongoDB does.
ID_LOOKUP_INDEX_SQL = """
CREATE OR REPLACE FUNCTION ferretdb_id_gin() RETURNS event_trigger LANGUAGE plpgsql AS $$
DECLARE
  cmd record;
  idx record;
BEGIN
  FOR cmd IN SELECT * FROM pg_event_trigger_ddl_commands() WHERE command_tag = 'CREATE INDEX' LOOP
    SELECT c.relname, i.indrelid::regclass AS tbl INTO idx
      FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
     WHERE i.indexrelid = cmd.objid AND i.indisunique
       AND pg_get_indexdef(i.indexrelid) LIKE '%((_jsonb -> ''_id''::text))%';
    IF FOUND THEN
      EXECUTE format(
        'CREATE INDEX %I ON %s USING gin ((_jsonb -> ''_id'') jsonb_path_ops) WITH (fastupdate = off)',
        left(idx.relname, 59) || '_gin', idx.tbl);
    END IF;
  END LOOP;
END $$;
DROP EVENT TRIGGER IF EXISTS ferretdb_id_gin;
CREATE EVENT TRIGGER ferretdb_id_gin ON ddl_command_end WHEN TAG IN ('CREATE INDEX')
  EXECUTE FUNCTION ferretdb_id_gin();
"""


def _start_postgres(directory: Path) -> tuple[Path, str]:
    """A private PostgreSQL cluster listening only on a Unix socket in ``directory``."""
    data = directory / "pgdata"
    sock = directory / "pgsock"
    sock.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        pg = pwd.getpwnam("postgres")
        for p in (directory, sock):
            os.chown(p, pg.pw_uid, pg.pw_gid)
    if not (data / "PG_VERSION").exists():
        if data.exists():
            shutil.rmtree(data)
        data.mkdir(parents=True)
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            os.chown(data, pg.pw_uid, pg.pw_gid)
        subprocess.run(
            _as_pg_user([pg_bin("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
    options = (
        f"-k {sock} -c listen_addresses='' -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c shared_buffers=256MB"
    )
    subprocess.run(
        _as_pg_user(
            [
                pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(directory / "postgres.log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    created = subprocess.run(
        _as_pg_user([pg_bin("createdb"), "-h", str(sock), "-U", "postgres", "ferretdb"]),
        capture_output=True,
        text=True,
    )
    if created.returncode != 0 and "already exists" not in created.stderr:
        raise TestServerError(f"createdb failed: {created.stderr.strip()}")
    indexed = subprocess.run(
        _as_pg_user(
            [pg_bin("psql"), "-h", str(sock), "-U", "postgres", "-d", "ferretdb", "-v", "ON_ERROR_STOP=1",
             "-q", "-c", ID_LOOKUP_INDEX_SQL]
        ),
        capture_output=True,
        text=True,
    )  # fmt: skip
    if indexed.returncode != 0:
        raise TestServerError(f"installing the _id lookup index trigger failed: {indexed.stderr.strip()}")
    return data, f"postgres://postgres@/ferretdb?host={sock}"


def start(
    directory: Path | None = None,
    port: int | None = None,
    backend: str | None = None,
    detach: bool = False,
) -> Server:
    """Start FerretDB (and its PostgreSQL) on a free loopback port.

    ``detach`` puts it in its own session, so it outlives this process (stop it
    with :func:`stop_recorded` after :meth:`Server.record`).
    """
    backend = backend or os.environ.get("MIGRATION_TESTDB_BACKEND") or "postgresql"
    if backend not in BACKENDS:
        raise TestServerError(f"unknown backend {backend!r} (postgresql or sqlite)")
    directory = Path(directory or tempfile.mkdtemp(prefix="migration-testdb-"))
    directory.mkdir(parents=True, exist_ok=True)
    binary = install()
    port = port or free_port()
    args = [
        str(binary),
        f"--listen-addr=127.0.0.1:{port}",
        "--telemetry=disable",
        f"--state-dir={directory}",
        "--debug-addr=-",
        "--log-level=warn",
    ]
    pg_data: Path | None = None
    if backend == "sqlite":
        (directory / "sqlite").mkdir(exist_ok=True)
        args += ["--handler=sqlite", f"--sqlite-url=file:{directory / 'sqlite'}/"]
    else:
        try:
            pg_data, pg_url = _start_postgres(directory)
        except subprocess.CalledProcessError as exc:
            detail = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            why = detail[-1] if detail else f"exit code {exc.returncode}"
            raise TestServerError(
                f"PostgreSQL did not start ({why}); see {directory / 'postgres.log'}"
            ) from exc
        args += ["--handler=postgresql", f"--postgresql-url={pg_url}"]
    logfile = open(directory / "ferretdb.log", "ab")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen(
        args,
        stdout=logfile,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=detach,
    )
    logfile.close()  # the child has its own descriptor
    server = Server(
        url=f"mongodb://127.0.0.1:{port}/",
        port=port,
        directory=directory,
        backend=backend,
        ferretdb=proc,
        postgres_data=pg_data,
    )
    try:
        wait_port(port, proc, 60, "FerretDB")
    except BaseException:
        server.stop()
        raise
    return server


def read_record(directory: Path) -> dict[str, Any] | None:
    """What :meth:`Server.record` wrote in ``directory``, or None."""
    path = directory / RECORD_NAME
    if not path.exists():
        return None
    record: dict[str, Any] = json.loads(path.read_text())
    return record


def running(record: dict[str, Any]) -> bool:
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_recorded(directory: Path) -> bool:
    """Stop the server recorded in ``directory`` (see :meth:`Server.record`); False if none."""
    record = read_record(directory)
    if record is None:
        return False
    try:
        os.kill(int(record["pid"]), signal.SIGTERM)
        for _ in range(100):
            os.kill(int(record["pid"]), 0)
            time.sleep(0.1)
    except ProcessLookupError:
        pass
    if record.get("postgres_data"):
        _stop_postgres(record["postgres_data"])
    (directory / RECORD_NAME).unlink()
    return True
