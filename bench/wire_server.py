#!/usr/bin/env python3
"""A second MongoDB-wire server for the benchmarks, without FerretDB 1.x's statement cap.

    python bench/wire_server.py            # builds once, then serves until Ctrl-C
    python bench/wire_server.py --port 27999
    python bench/wire_server.py --heap 8g      # Java heap (default 4g): 1M documents need more

It prints the URL to use as ``--url`` (or ``MIGRATION_TEST_MONGO_URL``). The server
is mongo-java-server 1.46 (Maven Central) with its in-memory backend: commands of
any number of statements, so client CPU per document is measured with the batch
sizes a MongoDB would take (1,000 documents an insert, 1,000 updates a command).
It is a benchmark peer (and a second server to run the mongo suite on, for
portability), not CI's server: it has no sessions, no ``dbHash`` and
no validators, and its own speed says nothing about MongoDB's. Needs Java 17+ and
Maven (``mvn``) on PATH; the classpath and classes go to ``~/.cache/migration/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent / "wire_server"
MVN = ("mvn", "-q")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "migration" / "wire-server-1.46.0"


def build() -> tuple[Path, str]:
    """(folder of compiled classes, classpath of the dependencies), built once."""
    classes = CACHE / "classes"
    cp_file = CACHE / "classpath.txt"
    if (classes / "bench" / "Main.class").exists() and cp_file.exists():
        return classes, cp_file.read_text().strip()
    for tool in ("mvn", "javac", "java"):
        if shutil.which(tool) is None:
            raise SystemExit(f"wire_server: {tool} is not on PATH (Java 17+ and Maven are needed)")
    CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [*MVN, "-f", str(HERE / "pom.xml"), "dependency:build-classpath", f"-Dmdep.outputFile={cp_file}"],
        check=True,
    )
    classpath = cp_file.read_text().strip()
    subprocess.run(["javac", "-cp", classpath, "-d", str(classes), str(HERE / "Main.java")], check=True)
    return classes, classpath


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WireServer:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(port: int | None = None, heap: str = "4g") -> WireServer:
    classes, classpath = build()
    port = port or free_port()
    process = subprocess.Popen(
        ["java", f"-Xmx{heap}", "-cp", f"{classes}{os.pathsep}{classpath}", "bench.Main", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"wire_server: java exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return WireServer(process, f"mongodb://127.0.0.1:{port}/?directConnection=true")
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("wire_server: no answer on the port within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--heap", default="4g", help="Java heap, as -Xmx takes it (default: %(default)s)")
    args = parser.parse_args()
    server = start(args.port, args.heap)
    print(server.url, flush=True)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM stops the Java server too, as Ctrl-C does

    signal.signal(signal.SIGTERM, stop)
    try:
        server.process.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
