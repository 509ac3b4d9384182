"""Faults: the database going away mid-step, a full disk under a backup or the state.

The database tests start their own FerretDB (``scripts/testdb.py``'s ``start()``)
so they can stop it in the middle of a backup or a restore and start it again.

    python -m pytest -q tests/reliability/test_faults.py
"""

from __future__ import annotations

import resource
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import testdb
from helpers import assert_no_traceback, tmpfs, umount

from migration.demo.seed import seed

from .harness import (
    TALLY,
    ForkLauncher,
    Outcome,
    SubprocessLauncher,
    Workspace,
    step_statuses,
)
from .plans import database_checksums, write

pytestmark = pytest.mark.mongo


class PrivateServer:
    """A FerretDB of our own, on a fixed port, that a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.server = testdb.start(directory)
        self.port = self.server.port

    def url(self, database: str, credentials: str = "") -> str:
        return f"mongodb://{credentials}127.0.0.1:{self.port}/{database}"

    def stop(self) -> None:
        self.server.stop()

    def crash(self) -> None:
        """The server dies at once (SIGKILL), mid-request; its PostgreSQL is stopped too."""
        if self.server.ferretdb is not None:
            self.server.ferretdb.kill()
            self.server.ferretdb.wait()
        self.server.stop()

    def start(self) -> None:
        self.server = testdb.start(self.directory, port=self.port)


@pytest.fixture(scope="module")
def private_server() -> Iterator[PrivateServer]:
    # Not under pytest's tmp folder: PostgreSQL runs as its own user and must reach it.
    directory = Path(tempfile.mkdtemp(prefix="reliability-db-"))
    server = PrivateServer(directory)
    try:
        yield server
    finally:
        server.stop()
        time.sleep(0.2)
        shutil.rmtree(directory, ignore_errors=True)


FAULT_PLAN = """
name: fault-db
on_failure: stop
vars:
  src: "@SRC@"
  dst: "@DST@"
phases:
  - id: backup
    steps:
      - id: backup
        uses: mongo.backup
        retries: @RETRIES@
        retry_delay: 1
        with: {uri: "{{ vars.src }}", out: backups, verify: checksums}
  - id: restore
    steps:
      - id: restore
        uses: mongo.restore
        retries: @RETRIES@
        retry_delay: 1
        with:
          uri: "{{ vars.dst }}"
          from: "{{ steps.backup.outputs.path }}"
          drop: true
          allow_other_database: true
"""


def _world(tmp_path: Path, server: PrivateServer, launcher: ForkLauncher, retries: int) -> Workspace:
    tag = uuid.uuid4().hex[:8]
    src, dst = server.url(f"fault_src_{tag}"), server.url(f"fault_dst_{tag}")
    seed(src, 400)
    text = FAULT_PLAN.replace("@SRC@", src).replace("@DST@", dst).replace("@RETRIES@", str(retries))
    write(tmp_path / "plan.yaml", text)
    ws = Workspace(tmp_path, "fault-db", launcher)
    ws.env = {"FAULT_SRC": src, "FAULT_DST": dst}
    return ws


def _outage_during(ws: Workspace, server: PrivateServer, step: str, down_for: float) -> Outcome:
    """Run; crash the server in the middle of ``step``; start it again ``down_for`` s later.

    Mid-backup is when the first collection file has bytes in it; mid-restore is right
    after the first collection was restored (its second progress report).
    """
    if step == "backup":
        proc = ws.start(pause_at="step:backup:running")
        ws.wait_paused(proc)
        ws.release()

        def dumping() -> bool:
            return any(p.stat().st_size > 0 for p in (ws.root / "backups").glob("*.partial/*/*/*.bson"))

        deadline = time.monotonic() + 30
        while not dumping():
            assert not proc.poll() and time.monotonic() < deadline, "the backup ended before it wrote"
            time.sleep(0.002)
        server.crash()
    else:
        proc = ws.start(pause_at="progress:restore:2")
        ws.wait_paused(proc)
        server.crash()
        ws.release()
    stopped = time.monotonic()
    TALLY["faults: database outages"] += 1
    if down_for >= 0:
        time.sleep(max(0.0, down_for - (time.monotonic() - stopped)))
        server.start()
        return proc.wait(180)
    outcome = proc.wait(180)
    server.start()
    return outcome


def _backups(ws: Workspace) -> tuple[list[Path], list[Path]]:
    folder = ws.root / "backups"
    entries = sorted(folder.iterdir()) if folder.exists() else []
    return [p for p in entries if not p.name.endswith(".partial")], [
        p for p in entries if p.name.endswith(".partial")
    ]


def _step_errors(ws: Workspace) -> list[str]:
    return [
        str(e.get("error")) for e in ws.events() if e.get("dest") in ("retry", "failed") and e.get("error")
    ]


# Longer than the 5 s a step waits for a server to answer (common.CONNECT_TIMEOUT_MS):
# shorter outages are ridden out inside one attempt by the driver's server selection.
OUTAGE_S = 8.0


@pytest.mark.parametrize("step", ["backup", pytest.param("restore", marks=pytest.mark.slow)])
def test_server_gone_mid_step_is_retried_within_the_policy(
    step: str, tmp_path: Path, private_server: PrivateServer, fork_launcher: ForkLauncher
) -> None:
    ws = _world(tmp_path, private_server, fork_launcher, retries=4)
    src, dst = ws.env["FAULT_SRC"], ws.env["FAULT_DST"]
    outcome = _outage_during(ws, private_server, step, down_for=OUTAGE_S)

    assert outcome.code == 0, outcome.stderr[-3000:]
    assert_no_traceback(outcome.stderr)
    state = ws.read_state()
    assert state is not None
    attempts = {s["id"]: s["attempts"] for p in state["phases"] for s in p["steps"]}
    assert attempts[step] >= 2, attempts
    errors = _step_errors(ws)
    assert errors, "no retry was recorded"
    for error in errors:
        assert "\n" not in error and "Traceback" not in error
    complete, partial = _backups(ws)
    assert len(complete) == 1 and not partial, (complete, partial)
    assert database_checksums(dst) == database_checksums(src)


@pytest.mark.parametrize("step", ["backup", "restore"])
def test_server_gone_without_retries_fails_clearly_then_resumes(
    step: str, tmp_path: Path, private_server: PrivateServer, fork_launcher: ForkLauncher
) -> None:
    ws = _world(tmp_path, private_server, fork_launcher, retries=0)
    src, dst = ws.env["FAULT_SRC"], ws.env["FAULT_DST"]
    source_before = None if step == "backup" else database_checksums(src)

    failed = _outage_during(ws, private_server, step, down_for=-1)

    assert failed.code == 1, failed.stderr[-3000:]
    assert_no_traceback(failed.stderr)
    last = failed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: step {step} failed: "), last
    assert "resume from the failed step with: migration run plan.yaml" in last
    if step == "backup":
        assert "the unfinished backup" in last and "was removed" in last, last
    else:
        assert "half-restored" in last and "run the restore again" in last, last
    complete, partial = _backups(ws)
    assert not partial, "the failed backup left a partial folder"
    assert len(complete) == (0 if step == "backup" else 1)
    state = ws.read_state()
    assert state is not None and step_statuses(state)[step] == "failed"

    resumed = ws.run()

    assert resumed.code == 0, resumed.stderr[-3000:]
    assert database_checksums(dst) == database_checksums(src)
    if source_before is not None:
        assert database_checksums(src) == source_before
    starts = ws.starts()
    assert starts["backup"] == (2 if step == "backup" else 1), starts


# -- disk full ----------------------------------------------------------------------------


DISK_PLAN = """
name: fault-disk
on_failure: rollback
vars:
  db: "@DB@"
rollback:
  - id: restore
    uses: mongo.restore
    with: {uri: "{{ vars.db }}", from: "{{ steps.backup.outputs.path }}", drop: true}
phases:
  - id: backup
    steps:
      - {id: backup, uses: mongo.backup, with: {uri: "{{ vars.db }}", out: "@OUT@"}}
  - id: drop
    steps:
      - id: drop-old
        uses: python
        with: {function: "dropper:drop", params: {uri: "{{ vars.db }}"}}
"""

DROPPER = """
import pymongo

def drop(uri):
    client = pymongo.MongoClient(uri)
    client.get_default_database().drop_collection("AuditLog")
    client.close()
    open("dropped.txt", "w").write("dropped")
"""


# "tmpfs" falls back to the file-size limit where mounting is not allowed.
@pytest.mark.parametrize("limit", ["tmpfs", pytest.param("file-size-limit", marks=pytest.mark.slow)])
def test_disk_full_during_backup_fails_marks_nothing_usable_and_drops_nothing(
    limit: str, tmp_path: Path, private_server: PrivateServer, subprocess_launcher: SubprocessLauncher
) -> None:
    db = private_server.url(f"fault_disk_{uuid.uuid4().hex[:8]}")
    seed(db, 400)
    before = database_checksums(db)
    out = tmp_path / "small-disk"
    # A 256 kB tmpfs (root only), else RLIMIT_FSIZE: a file past 64 kB fails with EFBIG.
    mounted = limit == "tmpfs" and tmpfs(out, "256k")
    out.mkdir(exist_ok=True)
    write(tmp_path / "plan.yaml", DISK_PLAN.replace("@DB@", db).replace("@OUT@", str(out)))
    write(tmp_path / "dropper.py", DROPPER)
    ws = Workspace(tmp_path, "fault-disk", subprocess_launcher)
    try:
        outcome = ws.run() if mounted else _run_with_file_size_limit(ws, 64 * 1024)
        TALLY[f"faults: disk full ({'tmpfs' if mounted else 'RLIMIT_FSIZE'})"] += 1
        assert outcome.code == 3, outcome.stderr[-3000:]
        assert_no_traceback(outcome.stderr)
        state = ws.read_state()
        assert state is not None
        error = step_statuses(state)["backup"], state["phases"][0]["steps"][0]["error"]
        assert error[0] == "failed"
        assert "disk full while writing the backup" in error[1], error
        assert "was removed" in error[1], error
        leftovers = [p.name for p in out.iterdir() if p.name.startswith("backup-")]
        assert leftovers == [], f"an unusable backup was left: {leftovers}"
        # Nothing was dropped: the step after the backup never ran, the data is as it was.
        assert not (tmp_path / "dropped.txt").exists()
        assert database_checksums(db) == before
        rollback = {s["id"]: s for s in state["rollback"]["steps"]}
        assert rollback["restore"]["status"] == "skipped"
        assert "did not complete" in rollback["restore"]["reason"]
    finally:
        if mounted:
            umount(out)


def _run_with_file_size_limit(ws: Workspace, limit: int) -> Outcome:
    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [*ws.launcher_argv(), *ws.args()],
        cwd=ws.root,
        env=ws.process_env(),
        capture_output=True,
        text=True,
        timeout=180,
        preexec_fn=limit_file_size,
    )
    return Outcome(done.returncode, done.stdout, done.stderr)
