"""Shared helpers: the CLI in a subprocess, as users run it, and what the test server can do."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

PROJECT = Path(__file__).resolve().parent.parent
MIGRATION = [sys.executable, "-m", "migration.cli"]


def cli_env(extra: Mapping[str, str] | None = None, drop: Sequence[str] = ()) -> dict[str, str]:
    """The environment of a CLI subprocess: the package importable, no inherited state dir."""
    env = dict(os.environ)
    env.pop("MIGRATION_STATE_DIR", None)
    for name in drop:
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT), env.get("PYTHONPATH", "")) if p)
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def migration(
    cwd: Path,
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """Run ``migration ARGS`` in ``cwd`` to completion (stdin closed, output captured)."""
    return subprocess.run(
        [*MIGRATION, *map(str, args)],
        cwd=cwd,
        env=dict(env) if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


_BATCH_DRIVER = """
import contextlib, io, json, os, sys, traceback
from migration import cli

results = []
for cwd, args in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main.main(args, prog_name="migration")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, out.getvalue(), err.getvalue()])
sys.__stdout__.write(json.dumps(results))
"""


def migration_batch(
    calls: Sequence[tuple[Path, Sequence[str | Path]]], env: Mapping[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Many ``migration ARGS`` invocations (each in its own cwd) in one interpreter.

    For checks of quick failures (a bad plan), where starting Python for every
    call would dominate: the same click entry point, the same exit codes and
    stderr, one process for the lot.
    """
    payload = json.dumps([[str(cwd), [str(a) for a in args]] for cwd, args in calls])
    done = subprocess.run(
        [sys.executable, "-c", _BATCH_DRIVER],
        input=payload,
        env=dict(env) if env is not None else cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [
        subprocess.CompletedProcess(["migration", *map(str, args)], code, out, err)
        for (_, args), (code, out, err) in zip(calls, json.loads(done.stdout), strict=True)
    ]


def start_migration(
    cwd: Path, *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """Start ``migration ARGS`` in the background; the pid is the migration process itself."""
    return subprocess.Popen(
        [*MIGRATION, *map(str, args)],
        cwd=cwd,
        env=dict(env) if env is not None else cli_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def kill(proc: subprocess.Popen[str], sig: signal.Signals = signal.SIGKILL) -> tuple[int, str, str]:
    proc.send_signal(sig)
    return finish(proc)


def write_plan(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 20, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def lines_of(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def current_run_id(state_dir: Path, plan_name: str) -> str:
    return (state_dir / plan_name / "current").read_text().strip()


def load_state(state_dir: Path, plan_name: str, run_id: str | None = None) -> dict[str, Any]:
    """The run's state document; fails the test if it does not parse."""
    run_id = run_id or current_run_id(state_dir, plan_name)
    data: dict[str, Any] = json.loads((state_dir / plan_name / f"{run_id}.json").read_text())
    return data


def step_states(state: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["id"]: s for p in state["phases"] for s in p["steps"]}


def listing(root: Path) -> list[tuple[str, int, float]]:
    """Every path under ``root`` with size and mtime: equal listings mean nothing was written."""
    out = [(".", 0, root.stat().st_mtime)]  # something created and removed again shows here
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        out.append((str(path.relative_to(root)), st.st_size if path.is_file() else 0, st.st_mtime))
    return out


def pid_alive(pid: int, started: int | None = None) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone).

    With ``started`` (from :func:`start_ticks`, read while the process ran), a later
    process that was given the same pid does not count: pids wrap within seconds on
    a busy machine (pid_max 32768 here).
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat[stat.rfind(")") + 2 :].split()
    if started is not None and int(fields[19]) != started:
        return False
    return fields[0] not in ("Z", "X")


def start_ticks(pid: int) -> int | None:
    """The start time of process ``pid`` (clock ticks after boot), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rfind(")") + 2 :].split()[19])


def assert_no_traceback(result: subprocess.CompletedProcess[str] | str) -> None:
    text = result if isinstance(result, str) else result.stdout + result.stderr
    assert "Traceback" not in text, text


SMALL_FS_SKIP = "a size-limited filesystem needs root (mount -t tmpfs): run the tests as root, as CI does"


def tmpfs(directory: Path, size: str) -> bool:
    """Mount a size-limited tmpfs on ``directory``; False when not root.

    As root (CI, this machine) mounting must work: a failure fails the test rather
    than skipping it. Without root the caller uses its fallback or skips, saying
    :data:`SMALL_FS_SKIP`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"mount -t tmpfs failed as root: {done.stderr.strip()}"
    return True


def umount(directory: Path) -> None:
    """Undo :func:`tmpfs` (lazily: a process may still hold a file there)."""
    subprocess.run(["umount", "-l", str(directory)], capture_output=True)


# --- what the test server can do --------------------------------------------------
# Detected from buildInfo (migration.steps.mongo.common.detect_server), never assumed:
# FerretDB 1.x says ferretdbVersion "v1.24.2", FerretDB 2.x ferretdb.version "v2.7.0",
# MongoDB neither. A test that needs what a server lacks skips naming that limit.

FERRETDB1_LACKS = {
    "ttl_indexes": "TTL indexes (expireAfterSeconds)",
    "text_indexes": "text indexes",
    "nested_arrays": "nested arrays",
    "decimal128": "Decimal128",
    "partial_indexes": "partial indexes",
    "index_ns_option": 'the "ns" index option that mongorestore sends (Index option "ns" is unknown)',
}


def server_limit(kind: Any, feature: str) -> str | None:
    """Why the server cannot do ``feature`` (a key of :data:`FERRETDB1_LACKS`), or None if it can."""
    if kind.ferretdb1 and feature in FERRETDB1_LACKS:
        return f"{kind.name} lacks {FERRETDB1_LACKS[feature]} (a FerretDB 1.x limit)"
    return None


def skip_without(kind: Any, feature: str) -> None:
    """Skip the calling test, naming the server's limit, when it lacks ``feature``."""
    import pytest

    reason = server_limit(kind, feature)
    if reason is not None:
        pytest.skip(reason)


# --- what the test server can do, probed ---------------------------------------------
# Limits no version number tells: each is found by asking the server once a session
# (on first use), through the ``server_caps`` fixture. A probe returns None when the
# server can, else the limit in words, which the skipping test names.

COMMAND_NOT_FOUND = 59


def _probe_typed_set(db: Any) -> str | None:
    db.cap_typed.insert_one({"_id": 1, "v": 3})
    db.cap_typed.update_one({"_id": 1}, {"$set": {"v": 3.0}})
    if type(db.cap_typed.find_one({"_id": 1})["v"]) is not float:
        return "the server takes $set of an equal number of another type (3 -> 3.0) for a no-op"
    return None


def _probe_write_concern_refused(db: Any) -> str | None:
    from pymongo.errors import OperationFailure, WriteConcernError
    from pymongo.write_concern import WriteConcern

    try:
        db.get_collection("cap_concern", write_concern=WriteConcern(w=50)).insert_one({"_id": 1})
    except (OperationFailure, WriteConcernError):
        return None
    return "the server accepts an unsatisfiable write concern (w: 50 on one server): none is refused"


def _probe_collection_uuid(db: Any) -> str | None:
    db.create_collection("cap_uuid")
    spec = next(iter(s for s in db.list_collections() if s["name"] == "cap_uuid"), {})
    if "uuid" not in spec.get("info", {}):
        return "the server gives collections no UUID (listCollections info.uuid)"
    return None


def _probe_users(db: Any) -> str | None:
    from pymongo.errors import OperationFailure

    try:
        db.command("createUser", "cap_user", pwd="cap-password", roles=[])
    except OperationFailure as exc:
        if exc.code == COMMAND_NOT_FOUND:
            return "the server has no users (createUser answers 59 CommandNotFound)"
        raise
    db.command("dropUser", "cap_user")
    return None


PROBES: dict[str, Callable[[Any], str | None]] = {
    "typed_set": _probe_typed_set,
    "write_concern_refused": _probe_write_concern_refused,
    "collection_uuid": _probe_collection_uuid,
    "users": _probe_users,
}


class ServerCaps:
    """What the test server can do: :data:`FERRETDB1_LACKS` from its ``ServerKind``,
    the rest (:data:`PROBES`) by asking it, each once, in a scratch database."""

    def __init__(self, url: str, kind: Any) -> None:
        self.url = url
        self.kind = kind
        self.scratch = "cap_probe_" + os.urandom(4).hex()
        self._found: dict[str, str | None] = {}

    def limit(self, feature: str) -> str | None:
        """Why the server cannot do ``feature``, or None if it can."""
        if feature in FERRETDB1_LACKS:
            return server_limit(self.kind, feature)
        if feature not in self._found:
            import pymongo

            with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000) as client:
                self._found[feature] = PROBES[feature](client[f"{self.scratch}_{feature}"[:60]])
        return self._found[feature]

    def skip_without(self, feature: str) -> None:
        """Skip the calling test, naming the server's limit, when it lacks ``feature``."""
        import pytest

        reason = self.limit(feature)
        if reason is not None:
            pytest.skip(reason)

    def drop_scratch(self) -> None:
        import pymongo

        with pymongo.MongoClient(self.url, serverSelectionTimeoutMS=5000) as client:
            for name in self._found:
                client.drop_database(f"{self.scratch}_{name}"[:60])


def run_document(run_id: str, plan: str, steps: int = 3, padding: int = 0, **top: Any) -> dict[str, Any]:
    """A run document as the stores save it: one phase of ``steps`` pending shell steps.

    ``padding`` characters per step make it big enough for the journal; ``top``
    sets or adds top-level keys (``downtime``, ``plan_digest``...).
    """
    return {
        "schema_version": 1,
        "run_id": run_id,
        "plan_name": plan,
        "plan_path": f"plans/{plan}.yaml",
        "plan_digest": "sha256:" + "ab" * 32,
        "status": "running",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": None,
        "phases": [
            {
                "id": "main",
                "status": "running",
                "checkpoint": {"status": "pending", "results": []},
                "steps": [
                    {
                        "id": f"s{i}",
                        "uses": "shell",
                        "status": "pending",
                        "attempts": 0,
                        "outputs": {"note": "x" * padding},
                        "error": None,
                    }
                    for i in range(steps)
                ],
            }
        ],
        "rollback": {"status": None, "steps": []},
        **top,
    }
