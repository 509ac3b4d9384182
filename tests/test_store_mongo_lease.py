"""The lease in MongoDB: one winner per race, expiry, takeover, and fencing of a lost holder.

Races run in separate processes (multiprocessing ``spawn``: each has its own
client and ``MIGRATION_HOSTNAME``, five processes on three "hosts") that meet at
a barrier before acquiring. The fencing cases pause a holder (it stops renewing,
or is SIGSTOPped past its expiry) while another host takes over, and check that
the first stops at its next write with LeaseLost (exit 5) and writes nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pymongo
import pytest
from helpers import run_document

from migration.errors import LockedError, StateError
from migration.store_mongo import LeaseLost, MongoStateStore

pytestmark = pytest.mark.mongo

HOSTS = ("host-a", "host-a", "host-b", "host-b", "host-c")
ROUNDS = 10


make_state = run_document


def open_store(url: str, plan: str, host: str, seconds: float, tmp: Path | None = None) -> MongoStateStore:
    os.environ["MIGRATION_HOSTNAME"] = host
    try:
        return MongoStateStore(url, plan, lease_seconds=seconds, local_dir=tmp)
    finally:
        del os.environ["MIGRATION_HOSTNAME"]


@pytest.fixture
def db(mongo_url: str) -> Iterator[Any]:
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(mongo_url)
    yield client.get_default_database()
    client.close()


# -- races between processes ---------------------------------------------------------------
def race_worker(url: str, host: str, plans: list[str], seconds: float, barrier: Any, results: Any) -> None:
    """Acquire each plan's lease at the same moment as the other workers; report the outcome."""
    os.environ["MIGRATION_HOSTNAME"] = host
    stores = {plan: MongoStateStore(url, plan, lease_seconds=seconds) for plan in plans}
    for store in stores.values():
        store.prepare()
    for plan, store in stores.items():
        barrier.wait(timeout=60)
        try:
            store.lock.acquire()
            results.put((plan, host, os.getpid(), "won", store.lock.previous_owner))
        except LockedError as exc:
            results.put((plan, host, os.getpid(), "refused", str(exc)))
        barrier.wait(timeout=60)  # every worker has tried: only now may the winner let go
        store.release()
    for store in stores.values():
        store.conn.close()


def race(url: str, plans: list[str], seconds: float) -> dict[str, list[tuple[Any, ...]]]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(HOSTS))
    results = ctx.Queue()
    workers = [
        ctx.Process(target=race_worker, args=(url, host, plans, seconds, barrier, results)) for host in HOSTS
    ]
    for worker in workers:
        worker.start()
    outcomes: dict[str, list[tuple[Any, ...]]] = {plan: [] for plan in plans}
    try:
        for _ in range(len(plans) * len(HOSTS)):
            outcome = results.get(timeout=120)
            outcomes[outcome[0]].append(outcome)
    finally:
        for worker in workers:
            worker.join(timeout=30)
            if worker.is_alive():
                worker.kill()
    assert all(worker.exitcode == 0 for worker in workers), [w.exitcode for w in workers]
    return outcomes


FREE = [f"race-{i}" for i in range(ROUNDS)]
EXPIRED = [f"takeover-{i}" for i in range(ROUNDS)]


@pytest.fixture(scope="module")
def raced(mongo_server: Any) -> Iterator[tuple[Any, dict[str, list[tuple[Any, ...]]]]]:
    """One pool of five racing processes (spawning them is the slow part) runs both races:
    ten rounds for a free lease, then ten takeovers of an expired one."""
    name = "t_race_" + uuid.uuid4().hex[:8]
    url = mongo_server.database_url(name)
    dead = [open_store(url, plan, "host-dead", seconds=0.5) for plan in EXPIRED]
    for store in dead:
        store.acquire()
        store.lock.stop_renewing()  # it stops answering, as a killed process would
    time.sleep(0.7)
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url)
    try:
        yield client.get_default_database(), race(url, FREE + EXPIRED, seconds=30)
    finally:
        for store in dead:
            store.conn.close()
        client.drop_database(name)
        client.close()


def test_five_processes_on_three_hosts_racing_for_a_free_lease_give_one_winner(
    raced: tuple[Any, dict[str, list[tuple[Any, ...]]]],
) -> None:
    db, outcomes = raced
    for plan in FREE:
        winners = [o for o in outcomes[plan] if o[3] == "won"]
        assert len(winners) == 1, (plan, outcomes[plan])
        _, host, pid, _, previous = winners[0]
        assert previous is None
        for refused in (o for o in outcomes[plan] if o[3] == "refused"):
            # The live holder is named: host, pid, since when.
            message = refused[4]
            assert f"host {host} (pid {pid}," in message or "at the same moment" in message, message
            assert "since " in message or "at the same moment" in message
        assert [doc["epoch"] for doc in db["migration_leases"].find({"scope": plan})] == [1]


def test_five_processes_taking_over_one_expired_lease_give_one_winner(
    raced: tuple[Any, dict[str, list[tuple[Any, ...]]]],
) -> None:
    db, outcomes = raced
    for plan in EXPIRED:
        winners = [o for o in outcomes[plan] if o[3] == "won"]
        assert len(winners) == 1, (plan, outcomes[plan])
        previous = winners[0][4]
        assert previous["host"] == "host-dead" and previous["pid"] == os.getpid()
        assert previous["expired_at"]
        epochs = sorted(doc["epoch"] for doc in db["migration_leases"].find({"scope": plan}))
        assert epochs == [1, 2], epochs  # the losers inserted nothing


# -- expiry, renewal, release ------------------------------------------------------------------
def test_a_renewed_lease_outlives_its_length_and_a_released_one_is_free_at_once(mongo_url: str) -> None:
    holder = open_store(mongo_url, "renewed", "host-a", seconds=1)
    holder.acquire()
    time.sleep(2.2)  # more than twice the length: only the renewals keep it
    other = open_store(mongo_url, "renewed", "host-b", seconds=1)
    with pytest.raises(LockedError, match=r"live run on host host-a \(pid \d+, run .*since "):
        other.acquire()
    assert holder.lock.is_held() is True
    holder.release()
    assert holder.lock.is_held() is False
    other.acquire()
    assert other.lock.previous_owner is None  # released, not taken over
    assert other.lock.takeover_message() is None
    other.close()
    holder.conn.close()


def test_a_takeover_names_the_previous_holder_and_when_its_lease_expired(mongo_url: str) -> None:
    first = open_store(mongo_url, "expired", "host-a", seconds=0.5)
    first.acquire()
    first.save(make_state("20260101T000000Z-aaaaaa", "expired"))
    first.set_current("20260101T000000Z-aaaaaa")
    first.lock.stop_renewing()
    time.sleep(0.7)
    assert first.lock.is_held() is False
    second = open_store(mongo_url, "expired", "host-b", seconds=5)
    second.acquire()
    message = second.lock.takeover_message()
    assert message is not None
    assert "run 20260101T000000Z-aaaaaa from host host-a" in message and "which expired at 20" in message
    second.close()
    first.conn.close()


def test_a_write_without_the_lease_is_refused(mongo_url: str) -> None:
    store = open_store(mongo_url, "no-lease", "host-a", seconds=5)
    with pytest.raises(StateError, match="lease is not held"):
        store.save(make_state("20260101T000000Z-000000", "no-lease"))
    store.conn.close()


def test_a_bad_lease_length_is_a_usage_error(mongo_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIGRATION_LEASE_SECONDS", "soon")
    with pytest.raises(Exception, match=r"MIGRATION_LEASE_SECONDS.*number of seconds") as bad:
        MongoStateStore(mongo_url, "plan")
    assert getattr(bad.value, "exit_code", None) == 2


# -- fencing -------------------------------------------------------------------------------
def stored(db: Any, run_id: str) -> str:
    doc = db["migration_runs"].find_one({"_id": run_id})
    return str(doc["state_json"])


def test_a_holder_that_lost_its_lease_is_fenced_off_at_its_next_write(mongo_url: str, db: Any) -> None:
    run_id = "20260101T000000Z-fenced"
    a = open_store(mongo_url, "fenced", "host-a", seconds=1)
    a.acquire()
    state_a = make_state(run_id, "fenced")
    a.save(state_a)
    a.set_current(run_id)
    a.lock.stop_renewing()  # paused: no renewals
    time.sleep(1.2)
    b = open_store(mongo_url, "fenced", "host-b", seconds=5)
    b.acquire()
    state_b = b.load_current()
    assert state_b is not None
    state_b["phases"][0]["steps"][0]["status"] = "succeeded"
    b.save(state_b)
    after_b = stored(db, run_id)
    state_a["phases"][0]["steps"][1]["status"] = "succeeded"
    for write in (
        lambda: a.save(state_a),
        lambda: a.save_step(state_a, state_a["phases"][0]["steps"][1]),
        lambda: a.set_current("20260101T000000Z-other"),
    ):
        with pytest.raises(LeaseLost, match=r"host host-b .*took it over") as lost:
            write()
        assert lost.value.exit_code == 5
    assert stored(db, run_id) == after_b  # A wrote nothing
    assert db["migration_current"].find_one({"_id": "fenced"})["run_id"] == run_id
    doc = db["migration_runs"].find_one({"_id": run_id})
    assert doc["hosts"] == ["host-a", "host-b"]
    b.close()
    a.conn.close()


def test_a_stale_holder_writing_before_the_new_holder_wrote_is_still_refused(mongo_url: str, db: Any) -> None:
    """B took the lease but has not written yet: the run document does not fence A, the lease does."""
    run_id = "20260101T000000Z-window"
    a = open_store(mongo_url, "window", "host-a", seconds=1)
    a.acquire()
    state = make_state(run_id, "window")
    a.save(state)
    before = stored(db, run_id)
    a.lock.stop_renewing()
    time.sleep(1.2)
    b = open_store(mongo_url, "window", "host-b", seconds=5)
    b.acquire()
    state["status"] = "failed"
    with pytest.raises(LeaseLost):
        a.save(state)
    assert stored(db, run_id) == before
    b.close()
    a.conn.close()


def test_journaled_step_changes_of_a_lost_holder_are_never_applied(mongo_url: str, db: Any) -> None:
    run_id = "20260101T000000Z-bigrun"
    a = open_store(mongo_url, "bigrun", "host-a", seconds=1)
    a.acquire()
    state = make_state(run_id, "bigrun", steps=300, padding=300)  # big: step changes are journaled
    a.save(state)
    a.set_current(run_id)
    steps = state["phases"][0]["steps"]
    for step in steps[:10]:
        step["status"] = "succeeded"
        a.save_step(state, step)
    assert db["migration_journal"].count_documents({"run_id": run_id}) == 10
    a.lock.stop_renewing()
    time.sleep(1.2)
    b = open_store(mongo_url, "bigrun", "host-b", seconds=5)
    b.acquire()
    steps[10]["status"] = "succeeded"
    with pytest.raises(LeaseLost):
        a.save_step(state, steps[10])
    loaded = b.load_current()
    assert loaded is not None
    done = [s["id"] for s in loaded["phases"][0]["steps"] if s["status"] == "succeeded"]
    assert done == [f"s{i}" for i in range(10)]  # what A wrote while it held the lease, and no more
    loaded["phases"][0]["steps"][20]["status"] = "succeeded"
    b.save_step(loaded, loaded["phases"][0]["steps"][20])  # B's first write folds the journal
    assert db["migration_journal"].count_documents({"run_id": run_id}) == 0
    b.close()
    a.conn.close()


def stopped_holder(url: str, plan: str, run_id: str, events: Any, go: Any) -> None:
    """A holder in its own process: holds the lease, saves, then (once resumed) writes again."""
    os.environ["MIGRATION_HOSTNAME"] = "host-a"
    store = MongoStateStore(url, plan, lease_seconds=1)
    store.acquire()
    state = make_state(run_id, plan)
    store.save(state)
    store.set_current(run_id)
    events.put(("ready", os.getpid()))
    go.wait(timeout=60)
    state["status"] = "failed"  # what a stale holder would have written
    try:
        store.save(state)
        events.put(("wrote", 0, ""))
    except LeaseLost as exc:
        events.put(("lost", exc.exit_code, str(exc)))
    store.conn.close()


def test_a_sigstopped_holder_resumed_after_a_takeover_writes_nothing(mongo_url: str, db: Any) -> None:
    run_id = "20260101T000000Z-sigstop"
    ctx = multiprocessing.get_context("spawn")
    events, go = ctx.Queue(), ctx.Event()
    holder = ctx.Process(target=stopped_holder, args=(mongo_url, "sigstop", run_id, events, go))
    holder.start()
    try:
        kind, pid = events.get(timeout=60)
        assert kind == "ready"
        os.kill(pid, signal.SIGSTOP)
        time.sleep(1.3)  # past its expiry, with no renewal possible
        b = open_store(mongo_url, "sigstop", "host-b", seconds=5)
        b.acquire()
        assert b.lock.previous_owner is not None
        assert (b.lock.previous_owner["host"], b.lock.previous_owner["pid"]) == ("host-a", pid)
        state = b.load_current()
        assert state is not None
        state["phases"][0]["steps"][0]["status"] = "succeeded"
        b.save(state)
        after_b = stored(db, run_id)
        os.kill(pid, signal.SIGCONT)
        go.set()
        kind, code, message = events.get(timeout=60)
        assert (kind, code) == ("lost", 5), message
        assert "host host-b" in message
        assert stored(db, run_id) == after_b
        b.close()
    finally:
        if holder.is_alive() and holder.pid:
            os.kill(holder.pid, signal.SIGCONT)
        holder.join(timeout=30)


def busy_holder(url: str, plan: str, run_id: str, events: Any) -> None:
    """A holder journaling step after step until it is killed."""
    os.environ["MIGRATION_HOSTNAME"] = "host-a"
    store = MongoStateStore(url, plan, lease_seconds=1)
    store.acquire()
    state = make_state(run_id, plan, steps=2000, padding=40)  # big: steps are journaled
    store.save(state)
    store.set_current(run_id)
    for i, step in enumerate(state["phases"][0]["steps"]):
        step["status"] = "succeeded"
        step["attempts"] = 1
        store.save_step(state, step, durable=i % 2 == 1)
        if i == 50:
            events.put(("busy", os.getpid()))


def test_a_sigkilled_holder_is_taken_over_after_expiry_with_a_state_that_loads(mongo_url: str) -> None:
    run_id = "20260101T000000Z-killed"
    ctx = multiprocessing.get_context("spawn")
    events = ctx.Queue()
    holder = ctx.Process(target=busy_holder, args=(mongo_url, "killed", run_id, events))
    holder.start()
    kind, pid = events.get(timeout=60)
    assert kind == "busy"
    time.sleep(0.3)  # mid-stream: a write may be in flight
    os.kill(pid, signal.SIGKILL)
    holder.join(timeout=30)
    b = open_store(mongo_url, "killed", "host-b", seconds=5)
    with pytest.raises(LockedError, match=f"host host-a \\(pid {pid}, run {run_id}"):
        b.acquire()  # not yet expired: the dead holder is still named
    time.sleep(1.1)
    assert b.lock.is_held() is False
    b.acquire()
    assert b.lock.previous_owner is not None and b.lock.previous_owner["pid"] == pid
    state = b.load_current()
    assert state is not None
    statuses = [s["status"] for s in state["phases"][0]["steps"]]
    done = statuses.count("succeeded")
    assert done > 50 and statuses == ["succeeded"] * done + ["pending"] * (len(statuses) - done)
    state["status"] = "succeeded"
    b.save(state)  # the new holder writes on from there
    assert b.load_current() == state
    b.close()
