"""SIGKILL while several collections are dumped or restored at once, then run again.

The CLI runs in a subprocess, as an operator runs it; it is killed (SIGKILL: nothing
is cleaned up, nothing is flushed) once at least two collections are half-written,
then the same plan is run again: it must end exactly as an uninterrupted run would.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import cli_env, kill, migration, start_migration, write_plan

from migration.steps.base import StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.checksums import collection_checksum
from migration.steps.mongo.dumpfmt import MANIFEST_NAME, PARTIAL_SUFFIX

pytestmark = pytest.mark.mongo

NAMES = ["Alpha", "Bravo", "Charlie"]
SEED_BATCH = 20  # FerretDB 1.x: never 50 statements in one command


@pytest.fixture
def docs(server_kind: Any) -> int:
    """Documents a collection: enough batches that a kill lands with several in flight.

    A server without a statement cap takes 1,000 documents an insert, so it needs
    more of them than FerretDB 1.x's 20 a command to leave a window to kill in.
    """
    return 2500 if server_kind.statements_per_command else 20_000


def seed(db: Any, docs: int) -> None:
    batch = SEED_BATCH if docs <= 2500 else 1000
    for name in NAMES:
        for start in range(0, docs, batch):
            db[name].insert_many(
                [
                    {"_id": i, "n": i, "text": f"{name} {i} " + "x" * 600}
                    for i in range(start, min(start + batch, docs))
                ]
            )


def plan(tmp_path: Path, step: str) -> Path:
    return write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: parallel-kill
        on_failure: stop
        phases:
          - id: only
            steps:
              - {step}
        """,
    )


def run_until(tmp_path: Path, plan_path: Path, ready: Any, what: str) -> None:
    """Start the plan, SIGKILL it as soon as ``ready()`` holds."""
    proc = start_migration(tmp_path, "run", plan_path, "--state-dir", "state", "--yes", env=cli_env())
    deadline = time.monotonic() + 120
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before {what}: {proc.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, f"never saw {what}"
            time.sleep(0.01)
    finally:
        code, _, _ = kill(proc, signal.SIGKILL)
    assert code == -signal.SIGKILL


def step_record(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "state" / "parallel-kill"
    run_id = (folder / "current").read_text().strip()
    state = json.loads((folder / f"{run_id}.json").read_text())
    return dict(state["phases"][0]["steps"][0])


def test_backup_killed_with_several_collections_half_dumped_is_redone_whole(
    mongo_url: str, mongo_db: Any, tmp_path: Path, docs: int
) -> None:
    seed(mongo_db, docs)
    plan_path = plan(
        tmp_path, f"{{id: backup, uses: mongo.backup, with: {{uri: '{mongo_url}', out: backups}}}}"
    )
    backups = tmp_path / "backups"

    def half_dumped() -> bool:
        files = [p for p in backups.glob(f"*{PARTIAL_SUFFIX}/mongodb-dump/*/*.bson") if p.stat().st_size > 0]
        return len(files) >= 2

    run_until(tmp_path, plan_path, half_dumped, "two collections half-dumped")
    [leftover] = list(backups.glob(f"*{PARTIAL_SUFFIX}"))
    assert not (leftover / MANIFEST_NAME).exists()

    done = migration(tmp_path, "run", plan_path, "--state-dir", "state", "--yes", timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert "unfinished backup left by an earlier run" in done.stderr
    outputs = step_record(tmp_path)["outputs"]
    manifest = json.loads((Path(outputs["path"]) / MANIFEST_NAME).read_text())
    assert list(manifest["collections"]) == NAMES  # in name order, whatever finished first
    assert {n: e["count"] for n, e in manifest["collections"].items()} == dict.fromkeys(NAMES, docs)
    assert {n: e["checksum"] for n, e in manifest["collections"].items()} == {
        n: collection_checksum(mongo_db, n) for n in NAMES
    }


def test_restore_killed_with_several_collections_half_restored_resumes_to_the_backup(
    mongo_url: str, mongo_db: Any, tmp_path: Path, docs: int
) -> None:
    seed(mongo_db, docs)
    params = MongoBackup.Params(uri=mongo_url, out=str(tmp_path / "backups"))
    folder = Path(MongoBackup().run(StepContext(step_id="b", params=params, workdir=tmp_path))["path"])
    expected = {n: collection_checksum(mongo_db, n) for n in NAMES}
    for name in NAMES:
        mongo_db.drop_collection(name)
    # No drop: the second run restores only collections its killed attempt recorded as its
    # own; any other collection holding documents would be refused.
    step = f"{{id: restore, uses: mongo.restore, with: {{uri: '{mongo_url}', from: '{folder}'}}}}"
    plan_path = plan(tmp_path, step)

    def half_restored() -> bool:
        counts = [mongo_db[n].count_documents({}) for n in NAMES]
        return sum(1 for c in counts if 0 < c < docs) >= 2

    run_until(tmp_path, plan_path, half_restored, "two collections half-restored")
    progress = step_record(tmp_path)["progress"]
    assert len({progress["current"], *progress["partial"]} - {""}) >= 2

    done = migration(tmp_path, "run", plan_path, "--state-dir", "state", "--yes", timeout=300)

    assert done.returncode == 0, done.stderr[-3000:]
    assert step_record(tmp_path)["outputs"]["verified"] == "counts+checksums"
    assert {n: collection_checksum(mongo_db, n) for n in NAMES} == expected
