"""One contract, two stores: the file StateStore and the MongoStateStore behave alike.

Every test here runs once per store (``store`` is parametrised); what differs
between them (how a damaged run looks, where events are read from) lives in the
small ``Backend`` adapters below, never in the assertions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pymongo
import pytest
from helpers import run_document

from migration.errors import LockedError, StateError
from migration.secrets import Redactor
from migration.state import StateStore
from migration.store_mongo import MongoStateStore, StateBackend

pytestmark = pytest.mark.mongo


make_state = run_document


def without_seq(state: dict[str, Any] | None) -> dict[str, Any]:
    """A run without ``journal_seq`` (the writer's count of journal entries, not content)."""
    assert state is not None
    return {k: v for k, v in state.items() if k != "journal_seq"}


class Backend(Protocol):
    """How a test reaches behind one store (to damage it, or read its events)."""

    kind: str

    def store(self, plan: str) -> StateBackend: ...

    def events(self, store: Any, run_id: str) -> list[dict[str, Any]]: ...

    def damage(self, store: Any, run_id: str, text: str) -> None: ...

    def raw(self, store: Any, run_id: str) -> str: ...


class FileBackend:
    kind = "file"

    def __init__(self, root: Path) -> None:
        self.root = root

    def store(self, plan: str) -> StateStore:
        return StateStore(self.root, plan, Redactor())

    def events(self, store: Any, run_id: str) -> list[dict[str, Any]]:
        path = store.events_path(run_id)
        return [json.loads(line) for line in path.read_text().splitlines()]

    def damage(self, store: Any, run_id: str, text: str) -> None:
        store.run_path(run_id).write_text(text)

    def raw(self, store: Any, run_id: str) -> str:
        return str(store.run_path(run_id).read_text())


class MongoBackend:
    kind = "mongo"

    def __init__(self, url: str, local: Path) -> None:
        self.url = url
        self.local = local
        self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
        self.opened: list[MongoStateStore] = []

    def store(self, plan: str) -> MongoStateStore:
        store = MongoStateStore(self.url, plan, Redactor(), lease_seconds=10, local_dir=self.local / plan)
        self.opened.append(store)
        return store

    def events(self, store: Any, run_id: str) -> list[dict[str, Any]]:
        return list(store.read_events(run_id))

    def damage(self, store: Any, run_id: str, text: str) -> None:
        runs = self.client.get_default_database()["migration_runs"]
        assert runs.update_one({"_id": run_id}, {"$set": {"state_json": text}}).matched_count == 1

    def raw(self, store: Any, run_id: str) -> str:
        doc = self.client.get_default_database()["migration_runs"].find_one({"_id": run_id})
        assert doc is not None
        return str(doc)

    def close(self) -> None:
        for store in self.opened:
            store.close()
        self.client.close()


@pytest.fixture(params=["file", "mongo"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "file":
        yield FileBackend(tmp_path / "state")
        return
    url = request.getfixturevalue("mongo_url")
    mongo = MongoBackend(url, tmp_path / "local")
    try:
        yield mongo
    finally:
        mongo.close()


@pytest.fixture
def held(backend: Backend) -> Iterator[Callable[[str], Any]]:
    """Stores that hold their plan's lock or lease, released at the end."""
    stores: list[Any] = []

    def open_held(plan: str) -> Any:
        store = backend.store(plan)
        store.acquire()
        stores.append(store)
        return store

    yield open_held
    for store in stores:
        store.release()


def test_a_saved_run_loads_back_equal_and_is_current(backend: Backend, held: Callable[[str], Any]) -> None:
    store = held("roundtrip")
    assert store.load_current() is None
    assert store.current_run_id() is None
    state = make_state("20260101T000000Z-aaaaaa", "roundtrip")
    state["phases"][0]["steps"][0]["outputs"] = {"unicode": "zoë ✓", "nested": {"list": [1, 2.5, None]}}
    store.save(state)
    store.set_current(state["run_id"])
    assert store.current_run_id() == state["run_id"]
    fresh = backend.store("roundtrip")  # another reader, as `status` on another host
    assert fresh.load_current() == state
    assert fresh.load(state["run_id"]) == state


def test_the_current_pointer_moves_to_the_newest_run_and_list_runs_sees_all(
    backend: Backend, held: Callable[[str], Any]
) -> None:
    store = held("many")
    ids = ["20260101T000000Z-000001", "20260102T000000Z-000002", "20260103T000000Z-000003"]
    for run_id in ids:
        state = make_state(run_id, "many")
        state["status"] = "succeeded"
        store.save(state)
        store.set_current(run_id)
    other = held("other-plan")
    other.save(make_state("20260104T000000Z-000004", "other-plan"))
    assert store.list_runs() == ids
    assert store.current_run_id() == ids[-1]
    assert store.load_current()["run_id"] == ids[-1]
    assert store.load(ids[0])["status"] == "succeeded"


def test_events_are_kept_in_order_with_their_fields(backend: Backend, held: Callable[[str], Any]) -> None:
    store = held("events")
    state = make_state("20260101T000000Z-eeeeee", "events")
    store.save(state)
    events = store.open_events(state["run_id"])
    events.emit("run", run_id=state["run_id"], transition="start", source="pending", dest="running")
    events.emit("step", run_id=state["run_id"], step="s0", dest="succeeded", duration_s=0.25)
    events.emit(
        "step", run_id=state["run_id"], step="s1", dest="failed", error="see mongodb://u:hunter22@h/db"
    )
    store.release()
    seen = backend.events(store, state["run_id"])
    assert [e["event"] for e in seen] == ["run", "step", "step"]
    assert seen[0]["transition"] == "start" and seen[0]["dest"] == "running"
    assert seen[1]["step"] == "s0" and seen[1]["duration_s"] == 0.25
    assert "hunter22" not in json.dumps(seen) and "***" in seen[2]["error"]
    assert all(e.get("timestamp") for e in seen)


def test_step_changes_of_a_big_run_survive_a_reload(backend: Backend, held: Callable[[str], Any]) -> None:
    """Big states journal step changes between full saves; a reader sees every change."""
    store = held("big")
    state = make_state("20260101T000000Z-bbbbbb", "big", steps=400, padding=300)
    store.save(state)
    store.set_current(state["run_id"])
    for i, step in enumerate(state["phases"][0]["steps"][:300]):
        step["status"] = "succeeded"
        step["attempts"] = 1
        step["outputs"] = {"i": i}
        store.save_step(state, step, durable=i % 2 == 0)
    store.sync()
    assert without_seq(backend.store("big").load_current()) == without_seq(state)
    state["status"] = "succeeded"
    store.save(state)
    assert backend.store("big").load_current() == state


def test_a_second_holder_is_refused_with_exit_5(backend: Backend, held: Callable[[str], Any]) -> None:
    first = held("locked")
    first.save(make_state("20260101T000000Z-cccccc", "locked"))
    second = backend.store("locked")
    with pytest.raises(LockedError) as refused:
        second.acquire()
    assert refused.value.exit_code == 5
    assert "locked by" in str(refused.value)
    first.release()
    second.acquire()  # released: the next one takes it at once
    assert not second.lock.previous_owner
    second.release()


def test_a_damaged_run_is_a_one_line_error_and_can_be_set_aside(
    backend: Backend, held: Callable[[str], Any]
) -> None:
    store = held("damaged")
    state = make_state("20260101T000000Z-dddddd", "damaged")
    store.save(state)
    store.set_current(state["run_id"])
    backend.damage(store, state["run_id"], '{"run_id": "20260101T000000Z-dddddd", "status": ')
    with pytest.raises(StateError, match=r"not valid JSON.*migration abandon damaged"):
        store.load_current()
    backend.damage(store, state["run_id"], json.dumps({**state, "phases": {"not": "a list"}}))
    with pytest.raises(StateError, match=r"not a migration state \(phases is an object, not a list\)"):
        store.load_current()
    backend.damage(store, state["run_id"], json.dumps({**state, "schema_version": 99}))
    with pytest.raises(StateError, match="newer migration"):
        store.load_current()
    kept = store.set_aside(state["run_id"])
    assert kept is not None
    assert store.current_run_id() is None
    assert store.load_current() is None
    assert store.list_runs() == []


def test_url_passwords_never_reach_the_stored_run(backend: Backend, held: Callable[[str], Any]) -> None:
    store = held("secrets")
    state = make_state("20260101T000000Z-ffffff", "secrets")
    state["phases"][0]["steps"][0]["outputs"] = {"uri": "mongodb://admin:s3cr3t-pw@db.example/prod"}
    store.save(state)
    raw = backend.raw(store, state["run_id"])
    assert "s3cr3t-pw" not in raw
    assert "mongodb://admin:***@db.example/prod" in raw


def test_a_new_run_id_from_the_engine_round_trips(backend: Backend, held: Callable[[str], Any]) -> None:
    from migration.state import new_run_id

    store = held("ids")
    run_id = new_run_id()
    store.save(make_state(run_id, "ids"))
    store.set_current(run_id)
    assert backend.store("ids").load_current()["run_id"] == run_id
