"""What every benchmark needs: a server, seeded data, children that measure themselves.

Every timed operation runs in a fresh child process (``bench/child.py``), which
times only the operation (not the interpreter start or imports) and reports its
own peak RSS (``VmHWM``), so one run gives speed and memory of each figure, and
one figure's garbage never inflates the next one's memory.
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bson
import pymongo
from bson.raw_bson import RawBSONDocument

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "scripts"))
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

COLLECTION = "PropertyBankDetails"
# migration.demo.dataset scales every collection with the number of properties:
# 42 bank details per 45 properties.
BANK_DETAILS_PER_PROPERTY = 42 / 45
SEED_BATCH = 1000


def say(message: str) -> None:
    """Progress on stderr; stdout carries only the results."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


# --- the server ----------------------------------------------------------------------


@dataclass
class Server:
    """A running server and what to say about it beside each figure."""

    url: str
    kind: str  # e.g. "FerretDB 1.24.2 (PostgreSQL 17.6 backend)" or "MongoDB 7.0.12"
    ferretdb: bool
    pid: int | None = None  # the server process, when we started it (for its memory)
    stop: Callable[[], None] = field(default=lambda: None)

    def database_url(self, name: str) -> str:
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(self.url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))

    def client(self) -> pymongo.MongoClient[Any]:
        return pymongo.MongoClient(self.url, serverSelectionTimeoutMS=10_000)

    def peak_rss_kb(self) -> int | None:
        """VmHWM of the server process (FerretDB only; PostgreSQL's are separate processes)."""
        return vm_hwm_kb(self.pid) if self.pid else None


def vm_hwm_kb(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _describe(client: pymongo.MongoClient[Any], backend: str | None) -> tuple[str, bool]:
    build = client.admin.command("buildInfo")
    if "ferretdbVersion" in build or "ferretdb" in json.dumps(build, default=str).lower():
        version = str(build.get("ferretdbVersion") or build.get("ferretdb", {}).get("version", "?"))
        version = version.removeprefix("v")
        return f"FerretDB {version} (MongoDB {build.get('version')} wire){backend or ''}", True
    if "gitVersion" not in build:  # every mongod says it; mongo-java-server only says a version
        return f"mongo-java-server (MongoDB {build.get('version')} wire; bench/wire_server.py)", False
    return f"MongoDB {build.get('version')}", False


def _postgres_version() -> str:
    import testdb

    try:
        done = subprocess.run([testdb._pg_bin("postgres"), "--version"], capture_output=True, text=True)
        found = re.search(r"\d+(?:\.\d+)+", done.stdout)
        return found.group(0) if found else "?"
    except (OSError, SystemExit):
        return "?"


def open_server(url: str | None) -> Server:
    """``url``, else ``MIGRATION_TEST_MONGO_URL``, else a private FerretDB started here."""
    url = url or os.environ.get("MIGRATION_TEST_MONGO_URL")
    if url:
        client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=10_000)
        try:
            kind, ferretdb = _describe(client, None)
        finally:
            client.close()
        return Server(url=url, kind=kind, ferretdb=ferretdb)
    import testdb

    say("starting a private FerretDB (scripts/testdb.py start())")
    started = testdb.start()
    backend = started.backend
    detail = f" + PostgreSQL {_postgres_version()}" if backend == "postgresql" else " + SQLite"
    client = pymongo.MongoClient[Any](started.url, serverSelectionTimeoutMS=10_000)
    try:
        kind, _ = _describe(client, detail)
    finally:
        client.close()

    def stop() -> None:
        started.stop()
        shutil.rmtree(started.directory, ignore_errors=True)

    pid = started.ferretdb.pid if started.ferretdb is not None else None
    return Server(url=started.url, kind=kind, ferretdb=True, pid=pid, stop=stop)


def machine() -> str:
    cpus = os.cpu_count() or 0
    try:
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        memory = "? RAM"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return (
        f"{cpus} cores, {memory}, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, pymongo {pymongo.version}, load average {load:.1f} at start"
    )


# --- the data ------------------------------------------------------------------------


def dataset_file(docs: int, cache: Path) -> Path:
    """A .bson file of the first ``docs`` VNP PropertyBankDetails documents, made once.

    Generated by ``migration.demo.dataset.generate`` (the demo's own generator, with
    its messy mix of IBANs, BICs, empty and invalid values), so every figure is
    measured on the same bytes and reseeding a collection costs one bulk insert.
    """
    from migration.demo.dataset import generate

    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"{COLLECTION}-{docs}.bson"
    if path.exists():
        return path
    say(f"generating {docs:,} {COLLECTION} documents into {path}")
    properties = max(1, -(-docs * 45 // 42))
    partial = path.with_suffix(".partial")
    written = 0
    with open(partial, "wb") as out:
        for document in generate(COLLECTION, size=properties):
            out.write(bson.encode(document))
            written += 1
            if written == docs:
                break
    partial.replace(path)
    return path


def raw_documents(path: Path) -> Iterator[bytes]:
    from migration.steps.mongo.dumpfmt import iter_documents

    return iter_documents(path)


def seed(server: Server, database: str, path: Path, collection: str = COLLECTION) -> int:
    """Replace ``database.collection`` with the documents of ``path``; return their number."""
    client = server.client()
    try:
        target = client[database][collection]
        target.drop()
        batch: list[RawBSONDocument] = []
        count = 0
        for raw in raw_documents(path):
            batch.append(RawBSONDocument(raw))
            if len(batch) >= SEED_BATCH:
                target.insert_many(batch, ordered=False)
                count += len(batch)
                batch = []
        if batch:
            target.insert_many(batch, ordered=False)
            count += len(batch)
        return count
    finally:
        client.close()


def drop_database(server: Server, name: str) -> None:
    client = server.client()
    try:
        client.drop_database(name)
    finally:
        client.close()


# --- children ------------------------------------------------------------------------


def run_child(operation: str, **arguments: Any) -> dict[str, Any]:
    """Run ``bench/child.py OPERATION`` and return what it measured (seconds, peak RSS...)."""
    argv = [sys.executable, str(PROJECT / "bench" / "child.py"), operation, json.dumps(arguments)]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, cwd=PROJECT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-12:]
        raise RuntimeError(f"child {operation} failed ({done.returncode}):\n" + "\n".join(tail))
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_seconds"] = round(wall, 3)
    return result


# --- figures -------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured thing, repeated: the median with min and max."""

    section: str
    name: str
    docs: int
    samples: list[float] = field(default_factory=list)  # seconds
    bytes: int = 0  # BSON bytes moved per repetition (for MB/s)
    rss_kb: list[int] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)  # the child's own CPU seconds
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def add(self, result: dict[str, Any]) -> None:
        self.samples.append(float(result["seconds"]))
        if result.get("peak_rss_kb"):
            self.rss_kb.append(int(result["peak_rss_kb"]))
        if "cpu_seconds" in result:
            self.cpu.append(float(result["cpu_seconds"]))
        if result.get("bytes"):
            self.bytes = int(result["bytes"])
        for key in ("update_one_ms", "guarded_update_one_ms"):
            if key in result:
                self.extra[key] = result[key]
        if result.get("server_commands"):
            self.extra.setdefault("server_commands", []).append(result["server_commands"])

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    def docs_per_second(self, seconds: float | None = None) -> float:
        seconds = self.median if seconds is None else seconds
        return self.docs / seconds if seconds > 0 else float("nan")

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "section": self.section,
            "name": self.name,
            "docs": self.docs,
            "seconds": {
                "median": round(self.median, 4) if self.samples else None,
                "min": round(min(self.samples), 4) if self.samples else None,
                "max": round(max(self.samples), 4) if self.samples else None,
                "samples": [round(s, 4) for s in self.samples],
            },
            "docs_per_second": round(self.docs_per_second(), 1) if self.samples else None,
            "note": self.note,
        }
        if self.bytes and self.samples:
            out["mb_per_second"] = round(self.bytes / 1e6 / self.median, 2)
        if self.cpu:
            out["client_cpu_seconds"] = round(statistics.median(self.cpu), 3)
        if self.rss_kb:
            out["peak_rss_mb"] = round(max(self.rss_kb) / 1024, 1)
        out.update(self.extra)
        return out


def workdir(root: Path | None = None) -> Path:
    return Path(tempfile.mkdtemp(prefix="migration-bench-", dir=root))
