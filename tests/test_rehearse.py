"""``migration rehearse``: a plan run on a throwaway copy of a backup, through the CLI.

Each CLI test starts its own rehearsal server (FerretDB on a private PostgreSQL,
the code path users get; a few seconds); the original database lives on the
test server and is checked unchanged afterwards, or is a closed port that
nothing may connect to.
"""

from __future__ import annotations

import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pymongo
import pytest
from helpers import cli_env, migration, write_plan

from migration import testserver
from migration.rehearse import Rehearsal
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.registry import get_step_type, registered

ORDERS = [{"_id": i, "status": "PAID" if i % 3 else "NEW", "total": i * 10} for i in range(1, 61)]

BACKUP_PLAN = """
name: take-backup
phases:
  - id: backup
    steps:
      - id: backup
        uses: mongo.backup
        with: {{uri: "{uri}", out: backups}}
"""

# Lower-cases `status`, checks it, and has steps with outside effects: a shell command
# that would leave a file behind, and a health check of an app that is not there.
REHEARSED_PLAN = """
name: orders-lowercase
vars:
  db: "{{{{ env.ORDERS_DB }}}}"
downtime: {{start: stop-app, end: smoke}}
rollback:
  - id: restore
    uses: mongo.restore
    with: {{uri: "{{{{ vars.db }}}}", from: "{{{{ steps.backup.outputs.path }}}}", drop: true}}
phases:
  - id: backup
    steps:
      - id: backup
        uses: mongo.backup
        with: {{uri: "{{{{ vars.db }}}}", out: backups}}
    checkpoint:
      - that: "steps.backup.outputs.total_records == 60"
  - id: migrate
    steps:
      - id: stop-app
        uses: shell
        with: {{command: [touch, app-was-stopped]}}
      - id: lower-status
        uses: mongo.transform
        with: {{uri: "{{{{ vars.db }}}}", collection: orders, function: "orders_fix:lower_status"}}
      - id: validate
        uses: mongo.validate
        with:
          uri: "{{{{ vars.db }}}}"
          checks:
            - {{name: lower-case, type: count, collection: orders, filter: {{status: {{$in: [paid, new]}}}},
               equals: {expected}}}
      - id: smoke
        uses: http.check
        with: {{url: "http://127.0.0.1:{closed}/health", deadline: 1}}
    checkpoint:
      - that: "steps.validate.outputs.failed == 0"
        message: orders are not all lower case
      - that: "steps.smoke.outputs.status == 200"
"""

FUNCTION = """
def lower_status(doc):
    return {"$set": {"status": doc["status"].lower()}}
"""


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def backup_of_orders(tmp_path: Path, mongo_url: str, mongo_db: Any) -> Path:
    """A mongo.backup of a database of 60 orders, taken by `migration run`."""
    mongo_db.orders.insert_many(ORDERS)
    plan = write_plan(tmp_path / "backup.yaml", BACKUP_PLAN.format(uri=mongo_url))
    done = migration(tmp_path, "run", plan, "--state-dir", tmp_path / "backup-state")
    assert done.returncode == 0, done.stderr
    (backup,) = (tmp_path / "backups").glob("backup-*")
    return backup


def rehearse(workdir: Path, plan: Path, *args: str | Path, db: str) -> Any:
    (workdir / "orders_fix.py").write_text(FUNCTION)
    env = cli_env({"ORDERS_DB": db, "MIGRATION_STATE_DIR": str(workdir / "state")})
    return migration(workdir, "rehearse", plan, *args, env=env, timeout=180)


def statuses(url: str) -> list[str]:
    client: pymongo.MongoClient[Any] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000)
    try:
        return [d["status"] for d in client.get_default_database().orders.find({}, sort=[("_id", 1)])]
    finally:
        client.close()


@pytest.mark.mongo
def test_rehearsal_transforms_the_copy_skips_outside_effects_and_leaves_the_original_alone(
    tmp_path: Path, backup_of_orders: Path, mongo_url: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    plan = write_plan(work / "plan.yaml", REHEARSED_PLAN.format(expected=60, closed=closed_port()))
    done = rehearse(
        work, plan, "--backup", backup_of_orders, "--keep-server", "--estimate", "smoke=30", db=mongo_url
    )
    kept = re.search(r"stop the server with: python scripts/testdb.py stop --dir (\S+)", done.stdout)
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        # The copy was transformed...
        copy = re.search(r"kept: the copy at (\S+)", out)
        assert copy is not None, out
        assert statuses(copy.group(1)) == [d["status"].lower() for d in ORDERS]
        # ...the original was not.
        assert statuses(mongo_url) == [d["status"] for d in ORDERS]
        # Outside effects are listed as skipped with the reason, and did not happen.
        assert re.search(r"^  stop-app +skipped", out, re.M), out
        assert re.search(r"^  smoke +skipped", out, re.M), out
        assert "stop-app: not rehearsed: shell has effects outside the database copy" in out
        assert "smoke: not rehearsed: http.check has effects outside the database copy" in out
        assert not (work / "app-was-stopped").exists()
        # A checkpoint condition on a skipped step is not judged; the others are.
        assert "migrate: steps.smoke.outputs.status == 200 (reads step smoke, which was not rehearsed)" in out
        assert re.search(r"^  lower-status +succeeded +\d+\.\ds$", out, re.M), out
        # Per-phase durations and the projected downtime (measured + the estimate).
        assert re.search(r"^backup +succeeded +\d+\.\ds  checkpoint passed$", out, re.M), out
        assert re.search(r"^migrate +succeeded +\d+\.\ds  checkpoint passed$", out, re.M), out
        assert re.search(r"projected downtime \(stop-app -> smoke\): \d+\.\ds = .* \+ 30\.0s smoke", out), out
        assert "plus the unknown time of skipped stop-app" in out
        assert out.rstrip().endswith(tuple(f"{n}s)" for n in "0123456789")) and "rehearsal: ok" in out
        # The rehearsal's own state went to its scratch folder (kept with --keep-server)...
        scratch = re.search(r"state and files of the rehearsal: (\S+)", out)
        assert (
            scratch is not None
            and (Path(scratch.group(1)) / "state" / "orders-lowercase" / "current").exists()
        )
        # ...and nothing was written to the real state directory or next to the real backups.
        assert not (work / "state").exists()
        assert not (work / "backups").exists()
    finally:
        if kept is not None:
            testserver.stop_recorded(Path(kept.group(1)))
            shutil.rmtree(kept.group(1), ignore_errors=True)
        workspace = re.search(r"state and files of the rehearsal: (\S+)", done.stdout)
        if workspace is not None:
            shutil.rmtree(workspace.group(1), ignore_errors=True)


@pytest.mark.mongo
def test_a_validation_that_fails_in_rehearsal_exits_non_zero_and_says_so(
    tmp_path: Path, backup_of_orders: Path
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    plan = write_plan(work / "plan.yaml", REHEARSED_PLAN.format(expected=59, closed=closed_port()))
    # The plan's own database is a closed port: any connection to it would fail the run.
    original = f"mongodb://operator:s3cret@127.0.0.1:{closed_port()}/shop?replicaSet=rs0"
    done = rehearse(work, plan, "--backup", backup_of_orders, db=original)
    assert done.returncode == 3, done.stdout + done.stderr
    assert (
        "error: rehearsal failed: checkpoint of phase migrate failed: orders are not all lower case"
        in done.stderr
    )
    assert "the rollback, rehearsed on the copy, completed" in done.stderr
    out = done.stdout
    assert re.search(r"^  lower-status +succeeded", out, re.M), out
    assert re.search(r"^  restore +succeeded", out, re.M), out
    assert "rehearsal: FAILED (rolled_back)" in out
    assert "s3cret" not in out + done.stderr
    assert "cannot reach" not in out + done.stderr


@pytest.mark.mongo
def test_a_missing_backup_is_a_usage_error(tmp_path: Path) -> None:
    plan = write_plan(tmp_path / "plan.yaml", REHEARSED_PLAN.format(expected=60, closed=closed_port()))
    done = rehearse(tmp_path, plan, "--backup", tmp_path / "nowhere", db="mongodb://127.0.0.1:1/shop")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == f"error: --backup {tmp_path / 'nowhere'}: no such folder"


def test_uris_are_pointed_at_the_copy_keeping_the_database_name() -> None:
    rehearsal = Rehearsal("mongodb://127.0.0.1:4000/", Path("/scratch"))
    assert (
        rehearsal.uri("mongodb://u:p@db1:27017,db2:27017/shop?replicaSet=rs0")
        == "mongodb://127.0.0.1:4000/shop"
    )
    assert rehearsal.uri("mongodb+srv://u:p@cluster.example.net/crm") == "mongodb://127.0.0.1:4000/crm"
    pointed = rehearsal.point_value(
        {"params": {"uri": "mongodb://prod/shop", "n": 3}, "list": ["mongodb://x/y"]}
    )
    assert pointed == {
        "params": {"uri": "mongodb://127.0.0.1:4000/shop", "n": 3},
        "list": ["mongodb://127.0.0.1:4000/y"],
    }


def test_step_types_declare_their_outside_effects_and_a_plugin_that_does_not_is_skipped() -> None:
    for name in ("shell", "http.check", "process.start", "process.stop", "notify", "confirm"):
        assert get_step_type(name).outside_effects is True, name  # type: ignore[union-attr]
    for name in ("python", "sleep", "require", "mongo.backup", "mongo.transform", "mongo.validate"):
        assert get_step_type(name).outside_effects is False, name  # type: ignore[union-attr]

    class Undeclared(Step[StepParams]):
        name = "test.undeclared"
        Params = StepParams

        def run(self, ctx: StepContext[StepParams]) -> dict[str, Any]:
            return {}

    from migration.plan.model import StepSpec

    with registered(Undeclared):
        rehearsal = Rehearsal("mongodb://127.0.0.1:4000/", Path("/scratch"))
        reason = rehearsal.skip_reason(StepSpec(id="mystery", uses="test.undeclared"), None)
        assert reason is not None and "test.undeclared has effects outside the database copy" in reason
        reader = StepSpec.model_validate(
            {"id": "after", "uses": "sleep", "with": {"seconds": "{{ steps.mystery.outputs.n }}"}}
        )
        assert rehearsal.skip_reason(reader, None) == (
            "not rehearsed: reads the outputs of step mystery, which was not rehearsed"
        )
