"""When mongo.backup takes its "before" counts, and what a write during the backup does.

On FerretDB 1.x a ``find`` reads one snapshot, taken when it starts; the backup relies
on it (the collections dumped from the start take their "before" count from their own
find, the others are counted meanwhile), so the first test pins that property.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from test_mongo_backup_restore import HookedContext, seed

from migration.errors import StepError
from migration.steps.mongo.backup import MongoBackup

pytestmark = pytest.mark.mongo


class CountCommands(monitoring.CommandListener):
    """Counts the exact counts (``count_documents`` is an ``aggregate`` with ``$group``)
    sent to one database while ``active``."""

    def __init__(self) -> None:
        self.database = ""
        self.counts: list[str] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database and event.command_name == "aggregate":
            with self.lock:
                self.counts.append(str(event.command["aggregate"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


LISTENER = CountCommands()
monitoring.register(LISTENER)  # for clients made from now on; records one database only


@pytest.fixture
def seeded(mongo_db: Any) -> Any:
    seed(mongo_db)
    LISTENER.database = mongo_db.name
    LISTENER.counts.clear()
    yield mongo_db
    LISTENER.database = ""


@pytest.fixture
def ferretdb1(server_kind: Any) -> None:
    if not server_kind.ferretdb1:
        pytest.skip(f"the snapshot property is FerretDB 1.x's; the server is {server_kind.name}")


def test_ferretdb1_find_reads_one_snapshot_taken_when_it_starts(ferretdb1: None, mongo_url: str) -> None:
    client: MongoClient[Any] = MongoClient(mongo_url)
    db = client.get_default_database()
    try:
        for start in range(0, 200, 20):
            db.c.insert_many([{"_id": i} for i in range(start, start + 20)])
        for sort in ({"_id": 1}, None):
            command: dict[str, Any] = {"find": "c", "filter": {}, "batchSize": 2}
            if sort:
                command["sort"] = sort
            cursor = db.command(command)["cursor"]
            seen, cursor_id = len(cursor["firstBatch"]), cursor["id"]
            db.c.insert_one({"_id": 1000})
            db.c.delete_one({"_id": 150})
            while cursor_id:
                cursor = db.command({"getMore": cursor_id, "collection": "c", "batchSize": 500})["cursor"]
                seen, cursor_id = seen + len(cursor["nextBatch"]), cursor["id"]
            assert seen == 200, "a write after the find started changed what it returns"
            db.c.delete_one({"_id": 1000})
            db.c.insert_one({"_id": 150})
    finally:
        client.close()


def test_ferretdb1_collections_dumped_first_are_not_counted_before(
    ferretdb1: None, mongo_url: str, seeded: Any, tmp_path: Path
) -> None:
    ctx = HookedContext(step_id="backup", params=MongoBackup.Params(uri=mongo_url, out="b"), workdir=tmp_path)
    outputs = MongoBackup().run(ctx)

    assert outputs["total_records"] == 302
    # Four collections, four at once: their finds are the "before" figures; only "after" counts.
    assert sorted(LISTENER.counts) == ["Empty", "Property", "PropertyBankDetails", "User"]


def test_ferretdb1_later_collections_are_counted_while_the_first_are_dumped(
    ferretdb1: None, mongo_url: str, seeded: Any, tmp_path: Path
) -> None:
    params = MongoBackup.Params(uri=mongo_url, out="b", parallel_collections=2)
    MongoBackup().run(HookedContext(step_id="backup", params=params, workdir=tmp_path))

    # Empty and Property are dumped first (their finds count them); the two others are
    # counted before (meanwhile) and after.
    assert sorted(LISTENER.counts) == sorted(
        ["Empty", "Property", "PropertyBankDetails", "User", "PropertyBankDetails", "User"]
    )


def test_a_write_to_a_collection_dumped_from_the_start_fails_the_backup(
    mongo_url: str, seeded: Any, server_kind: Any, tmp_path: Path
) -> None:
    # All four at once: the write comes after the first batch of one of them, when every
    # "before" figure is taken (on FerretDB 1.x: every find has its snapshot).
    ctx = HookedContext(
        step_id="backup",
        params=MongoBackup.Params(uri=mongo_url, out="backups", parallel_collections=4),
        workdir=tmp_path,
        hook=lambda: seeded.User.insert_one({"email": "late@example.com"}),
        hook_on="backup",
    )
    with pytest.raises(StepError) as failure:
        MongoBackup().run(ctx)

    message = str(failure.value)
    if server_kind.ferretdb1:
        assert "documents changed during the backup: User (before 60, dumped 60, after 61)" in message
    else:  # counted first; whether the dump saw the write depends on where its read was
        assert "documents changed during the backup: User (before 60, dumped 6" in message
        assert "after 61)" in message
    assert "was removed" in message
    assert list((tmp_path / "backups").iterdir()) == []
