#!/usr/bin/env python3
"""MongoDB Database Tools (mongodump, mongorestore) for the interoperability tests.

    python scripts/mongotools.py install   # find or build them; print their folder
    python scripts/mongotools.py path      # print their folder if they are there

Looked for, in order: both on PATH; the cache folder
(``~/.cache/migration/mongo-tools``, or ``$MIGRATION_CACHE_DIR/mongo-tools``); else
built from the Go module ``github.com/mongodb/mongo-tools``. Its release tags
(``100.10.0``) are not semantic versions, so a commit is resolved to a
pseudo-version (``go mod download -json <module>@<commit>``) and each tool is
built with ``go build -o <cache>/<tool> ./<tool>/main``.

Where the Go module proxy does not serve that module (this workplace's answers
``403 Forbidden: This module version is not available``), ``install`` exits 1 with
the command and the error; the interop tests then skip, saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

MODULE = "github.com/mongodb/mongo-tools"
# A commit of mongo-tools' main branch (100.x series); resolved as a pseudo-version.
COMMIT = "685fd936346fb8a0c9eef493d6ab2e91b9ed1aea"
TOOLS = ("mongodump", "mongorestore")


class ToolsUnavailable(Exception):
    """The tools are not installed and cannot be built here; the message says why."""


def cache_dir() -> Path:
    base = os.environ.get("MIGRATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "migration"
    )
    return Path(base) / "mongo-tools"


def find() -> Path | None:
    """The folder holding both tools, without building anything."""
    on_path = [shutil.which(tool) for tool in TOOLS]
    if all(on_path):
        folders = {Path(str(p)).resolve().parent for p in on_path}
        if len(folders) == 1:
            return folders.pop()
    cached = cache_dir()
    if all((cached / tool).is_file() for tool in TOOLS):
        return cached
    return None


def _run(argv: list[str], cwd: Path) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        try:  # `go mod download -json` reports its error inside the JSON on stdout
            error = str(json.loads(done.stdout)["Error"])
        except (ValueError, KeyError, TypeError):
            error = (done.stderr or done.stdout).strip()
        error = " / ".join(line.strip() for line in error.splitlines()[-3:])
        raise ToolsUnavailable(f"`{' '.join(argv)}` failed: {error}")
    return done.stdout


def install() -> Path:
    """Find the tools, or build them into the cache folder; ToolsUnavailable if neither."""
    found = find()
    if found is not None:
        return found
    go = shutil.which("go")
    if go is None:
        raise ToolsUnavailable("mongodump/mongorestore not on PATH and Go is not installed")
    with tempfile.TemporaryDirectory(prefix="mongo-tools-") as tmp:
        work = Path(tmp)
        info = json.loads(_run([go, "mod", "download", "-json", f"{MODULE}@{COMMIT}"], work))
        source = work / "src"
        shutil.copytree(info["Dir"], source)
        for path in [source, *source.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
        target = cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        for tool in TOOLS:
            partial = target / f"{tool}.partial"
            _run([go, "build", "-mod=mod", "-o", str(partial), f"./{tool}/main"], source)
            partial.replace(target / tool)
    return target


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else "install"
    if command not in ("install", "path"):
        print(__doc__, file=sys.stderr)
        return 2
    try:
        folder = install() if command == "install" else find()
    except ToolsUnavailable as exc:
        print(f"mongotools: {exc}", file=sys.stderr)
        return 1
    if folder is None:
        print("mongotools: not installed; run: python scripts/mongotools.py install", file=sys.stderr)
        return 1
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
