"""Fixtures of the reliability suite: launchers, a tiny HTTP service, the tally of what ran."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .harness import TALLY, ForkLauncher, SubprocessLauncher


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not TALLY:
        return
    terminalreporter.section("reliability tally")
    for name, count in sorted(TALLY.items()):
        terminalreporter.write_line(f"{name}: {count}")
    terminalreporter.write_line(
        f"kill points in all: {sum(v for k, v in TALLY.items() if k.startswith('kills'))}"
    )
    out = Path(os.environ.get("RELIABILITY_TALLY", ".pytest_cache/reliability-tally.json"))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(dict(sorted(TALLY.items())), indent=2) + "\n")
    except OSError:
        pass


@pytest.fixture(scope="session")
def fork_launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkLauncher]:
    launcher = ForkLauncher(tmp_path_factory.mktemp("fork-io"))
    try:
        yield launcher
    finally:
        launcher.close()


@pytest.fixture(scope="session")
def subprocess_launcher(tmp_path_factory: pytest.TempPathFactory) -> SubprocessLauncher:
    return SubprocessLauncher(tmp_path_factory.mktemp("sub-io"))


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"ok": True}).encode()
        self.send_response(200 if self.path == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="session")
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Context:
    """What scenario builders may need; the server starts only when a test asks for it."""

    request: pytest.FixtureRequest

    @property
    def mongo_server(self) -> Any:
        return self.request.getfixturevalue("mongo_server")

    @property
    def http_base(self) -> str:
        return str(self.request.getfixturevalue("http_base"))


@pytest.fixture
def context(request: pytest.FixtureRequest) -> Context:
    return Context(request)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Crash and fault tests race real processes against timers; on a shared, loaded
    machine a timer can lose. A failure is retried twice (pytest-rerunfailures) before
    it counts: a real bug fails all three times."""
    for item in items:
        if "tests/reliability/" in str(item.fspath).replace(os.sep, "/"):
            item.add_marker(pytest.mark.flaky(reruns=2, reruns_delay=1))
