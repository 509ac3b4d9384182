"""The one test-database fixture: a real server over TCP, never a mock.

Chosen in this order: ``MIGRATION_TEST_MONGO_URL``; a MongoDB container through
testcontainers when a Docker engine answers; a ``mongod`` on PATH; otherwise
FerretDB 1.24.2 built and started by ``scripts/testdb.py``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT / "scripts"))

import testdb  # noqa: E402


def _end_like_ctrl_c(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A SIGTERM (a CI time limit, a `kill`) ends the session as Ctrl-C does, so the
    # session fixtures' finalizers run and the servers they started do not outlive it.
    signal.signal(signal.SIGTERM, _end_like_ctrl_c)


def _docker_answers() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


class MongoServer:
    """A running server: ``url`` has no database; ``kind`` says which server."""

    def __init__(self, url: str, kind: str, stop: Any = None) -> None:
        self.url = url
        self.kind = kind
        self._stop = stop

    @property
    def is_ferretdb(self) -> bool:
        """How the server was started; what it can do comes from the ``server_kind`` fixture."""
        return self.kind.startswith("ferretdb")

    def database_url(self, name: str) -> str:
        return _with_database(self.url, name)

    def stop(self) -> None:
        if self._stop is not None:
            self._stop()


@pytest.fixture(scope="session")
def mongo_server() -> Iterator[MongoServer]:
    explicit = os.environ.get("MIGRATION_TEST_MONGO_URL")
    if explicit:
        yield MongoServer(explicit, "external")
        return
    if _docker_answers():
        from testcontainers.mongodb import MongoDbContainer

        container = MongoDbContainer("mongo:7.0")
        container.start()
        try:
            yield MongoServer(container.get_connection_url(), "mongodb-container")
        finally:
            container.stop()
        return
    mongod = shutil.which("mongod")
    if mongod:
        directory = tempfile.mkdtemp(prefix="migration-mongod-")
        port = testdb.free_port()
        proc = subprocess.Popen(
            [mongod, "--dbpath", directory, "--port", str(port), "--bind_ip", "127.0.0.1"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        testdb._wait_port(port, proc, 60, "mongod")
        try:
            yield MongoServer(f"mongodb://127.0.0.1:{port}/", "mongod")
        finally:
            proc.terminate()
            proc.wait(30)
            shutil.rmtree(directory, ignore_errors=True)
        return
    server = testdb.start()
    try:
        yield MongoServer(server.url, f"ferretdb-{server.backend}")
    finally:
        server.stop()
        time.sleep(0.2)
        shutil.rmtree(server.directory, ignore_errors=True)


@pytest.fixture(scope="session")
def server_kind(mongo_server: MongoServer) -> Any:
    """What the test server is (a ``ServerKind``), detected from its buildInfo: tests that
    depend on a server's limits decide from this, never from how the server was started."""
    import pymongo

    from migration.steps.mongo.common import detect_server

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_server.url, serverSelectionTimeoutMS=5000)
    try:
        return detect_server(client)
    finally:
        client.close()


@pytest.fixture(scope="session")
def server_caps(mongo_server: MongoServer, server_kind: Any) -> Iterator[Any]:
    """What the test server can do (a ``helpers.ServerCaps``): limits found by probing it
    once a session, so a test skips naming the limit, never the server's name."""
    from helpers import ServerCaps

    caps = ServerCaps(mongo_server.url, server_kind)
    yield caps
    caps.drop_scratch()


@pytest.fixture
def mongo_url(mongo_server: MongoServer) -> Iterator[str]:
    """A URL naming a fresh, empty database on the test server; dropped afterwards."""
    import pymongo

    name = "t_" + uuid.uuid4().hex[:12]
    url = mongo_server.database_url(name)
    yield url
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    finally:
        client.close()


@pytest.fixture
def mongo_db(mongo_url: str) -> Iterator[Any]:
    """A pymongo Database for ``mongo_url``."""
    import pymongo

    client: pymongo.MongoClient[Any] = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000)
    try:
        yield client.get_default_database()
    finally:
        client.close()
