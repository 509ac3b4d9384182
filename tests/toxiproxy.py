"""Toxiproxy (a real TCP fault proxy) between the tool and the test database.

Installed on first use with ``go install github.com/Shopify/toxiproxy/v2/cmd/server@v2.5.0``
into ``~/.cache/migration/toxiproxy-v2.5.0`` and driven through its HTTP API.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

VERSION = "v2.5.0"
MODULE = "github.com/Shopify/toxiproxy/v2/cmd/server"
CACHE = (
    Path(os.environ.get("MIGRATION_CACHE") or Path.home() / ".cache" / "migration") / f"toxiproxy-{VERSION}"
)


def install() -> Path:
    """The toxiproxy server binary, built with ``go install`` when missing (RuntimeError: why not)."""
    binary = CACHE / "server"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("go is not installed: toxiproxy cannot be built")
    CACHE.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [go, "install", f"{MODULE}@{VERSION}"],
        env={**os.environ, "GOBIN": str(CACHE)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0 or not binary.exists():
        raise RuntimeError(f"go install {MODULE}@{VERSION} failed: {done.stderr.strip()[-500:]}")
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Toxiproxy:
    """A running toxiproxy server and its API."""

    def __init__(self, binary: Path) -> None:
        self.port = free_port()
        self.api = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(binary), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                self._call("GET", "/version")
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise
                time.sleep(0.1)

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.api + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            text = answer.read().decode()
        try:
            return json.loads(text) if text else None
        except json.JSONDecodeError:
            return text

    def proxy(self, name: str, upstream_url: str) -> str:
        """A proxy to the server of ``upstream_url``; returns the same URL through the proxy."""
        parts = urlsplit(upstream_url)
        listen = free_port()
        self._call(
            "POST",
            "/proxies",
            {"name": name, "listen": f"127.0.0.1:{listen}", "upstream": parts.netloc.rsplit("@", 1)[-1]},
        )
        netloc = parts.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{listen}"
        return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))

    def add_toxic(
        self, proxy: str, name: str, kind: str, stream: str = "downstream", **attributes: Any
    ) -> None:
        self._call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {"name": name, "type": kind, "stream": stream, "toxicity": 1.0, "attributes": attributes},
        )

    def remove_toxic(self, proxy: str, name: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


@contextlib.contextmanager
def running() -> Iterator[Toxiproxy]:
    proxy = Toxiproxy(install())
    try:
        yield proxy
    finally:
        proxy.stop()
