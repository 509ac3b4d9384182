"""History of the MongoDB store, and the bounds on what it keeps (journal, progress events)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from helpers import run_document

from migration.store_mongo import MongoStateStore, format_history, history, last_success, open_history

pytestmark = pytest.mark.mongo

TARGET = "mongodb://app:t0p-secret@db1.internal:27017,db2.internal:27017/vnp?authSource=admin"


def make_state(run_id: str, plan: str, steps: int = 3, padding: int = 0) -> dict[str, Any]:
    return run_document(
        run_id,
        plan,
        steps,
        padding,
        plan_digest="sha256:" + "cd" * 32,
        started_at=run_id[:4] + "-01-01T00:00:00.000Z",
        downtime={"start": "s0", "end": "s1"},
    )


def open_store(
    url: str, plan: str, host: str, seconds: float = 5, target: str | None = TARGET
) -> MongoStateStore:
    os.environ["MIGRATION_HOSTNAME"] = host
    try:
        return MongoStateStore(url, plan, lease_seconds=seconds, target=target)
    finally:
        del os.environ["MIGRATION_HOSTNAME"]


@pytest.fixture
def db(mongo_url: str) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    yield client.get_default_database()
    client.close()


def finish(state: dict[str, Any], status: str) -> None:
    steps = state["phases"][0]["steps"]
    steps[0].update(
        status="succeeded", started_at="2026-01-01T00:00:10.000Z", finished_at="2026-01-01T00:00:11.000Z"
    )
    steps[1].update(
        status="succeeded", started_at="2026-01-01T00:00:40.000Z", finished_at="2026-01-01T00:00:52.500Z"
    )
    state["status"] = status
    state["finished_at"] = "2026-01-01T00:01:00.000Z"


def test_history_lists_every_run_of_every_plan_with_its_hosts_in_order(
    mongo_url: str, monkeypatch: pytest.MonkeyPatch, db: Any
) -> None:
    monkeypatch.setenv("USER", "alice")
    first = open_store(mongo_url, "vnp", "host-a", seconds=0.5)
    first.acquire()
    state = make_state("2025T-vnp-1", "vnp")
    first.save(state)
    first.set_current(state["run_id"])
    first.lock.stop_renewing()  # host-a dies mid-run
    time.sleep(0.7)
    monkeypatch.setenv("USER", "bob")
    second = open_store(mongo_url, "vnp", "host-b")
    second.acquire()
    resumed = second.load_current()
    assert resumed is not None
    finish(resumed, "succeeded")
    second.save(resumed)
    second.release()
    other = open_store(mongo_url, "cleanup", "host-c", target=None)
    other.acquire()
    other.save(make_state("2026T-cleanup-1", "cleanup"))
    other.release()

    rows = history(second.conn)
    assert [(r["plan"], r["run_id"], r["status"]) for r in rows] == [
        ("vnp", "2025T-vnp-1", "succeeded"),
        ("cleanup", "2026T-cleanup-1", "running"),
    ]
    vnp = rows[0]
    assert vnp["hosts"] == ["host-a", "host-b"]
    assert vnp["operator"] == "alice"  # who started it
    assert vnp["digest"] == "sha256:" + "cd" * 32
    assert vnp["target"] == "mongodb://db1.internal:27017,db2.internal:27017/vnp"
    assert vnp["downtime_s"] == 42.5
    assert (vnp["started_at"], vnp["finished_at"]) == ("2025-01-01T00:00:00.000Z", "2026-01-01T00:01:00.000Z")
    assert json.loads(json.dumps(rows)) == rows  # what `history --json` prints
    table = format_history(rows)
    assert "host-a > host-b" in table and "42.5 s" in table and "alice" in table
    assert len(table.splitlines()) == 3
    assert last_success(second.conn, "vnp", vnp["target"])["run_id"] == "2025T-vnp-1"
    assert last_success(second.conn, "vnp", "mongodb://elsewhere/vnp") is None
    assert open_history(mongo_url) == rows
    # Credentials reach no collection of the store.
    for name in db.list_collection_names():
        assert "t0p-secret" not in str(list(db[name].find())), name
    for store in (first, second, other):
        store.conn.close()


def test_the_step_journal_stays_bounded_over_a_thousand_step_changes(mongo_url: str, db: Any) -> None:
    store = open_store(mongo_url, "bounded", "host-a", seconds=30)
    store.acquire()
    state = make_state("2026T-bounded", "bounded", steps=1000, padding=60)
    store.save(state)
    most = 0
    for i, step in enumerate(state["phases"][0]["steps"]):
        step["status"] = "succeeded"
        step["attempts"] = 1
        store.save_step(state, step, durable=i % 2 == 1)
        if i % 50 == 0:
            most = max(most, db["migration_journal"].count_documents({}))
    assert 0 < most <= MongoStateStore.COMPACT_EVERY
    assert db["migration_journal"].count_documents({}) <= MongoStateStore.COMPACT_EVERY
    reader = open_store(mongo_url, "bounded", "host-b")
    loaded = reader.load(state["run_id"])
    assert all(s["status"] == "succeeded" for s in loaded["phases"][0]["steps"])
    store.close()
    reader.conn.close()


def test_progress_events_are_compacted_and_the_newest_kept(mongo_url: str, db: Any) -> None:
    store = open_store(mongo_url, "progress", "host-a")
    store.acquire()
    events = store.open_events("2026T-progress")
    events.emit("step", step="copy", dest="running")
    for batch in range(300):
        events.emit("progress", step="copy", batch=batch)
    events.emit("step", step="copy", dest="succeeded")
    seen = store.read_events("2026T-progress")
    progress = [e["batch"] for e in seen if e["event"] == "progress"]
    assert len(progress) < 2 * events.PROGRESS_KEEP
    assert progress[-1] == 299 and progress == sorted(progress)
    assert [e["dest"] for e in seen if e["event"] == "step"] == ["running", "succeeded"]
    assert db["migration_events"].count_documents({}) == len(seen)
    store.close()


def test_a_state_url_without_a_database_is_a_usage_error(mongo_server: Any, tmp_path: Path) -> None:
    with pytest.raises(Exception, match="names no database") as bad:
        MongoStateStore(mongo_server.url, "plan")
    assert getattr(bad.value, "exit_code", None) == 2
