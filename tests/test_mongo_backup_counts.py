"""When mongo.backup takes its "before" counts, and what a write during the backup does.

On FerretDB 1.x a ``find`` reads one snapshot, taken when it starts; the backup relies
on it there (the collections dumped from the start take their "before" count from their
own find, the others are counted meanwhile), and the first test checks that property
where it is relied on. Elsewhere every collection is counted before and after.
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


NAMES = ["Empty", "Property", "PropertyBankDetails", "User"]


def find_reads_one_snapshot(mongo_url: str) -> bool:
    """Whether a ``find`` on this server returns the documents as they were when it
    started, whatever is written while its cursor is read (sorted or not)."""
    client: MongoClient[Any] = MongoClient(mongo_url)
    db = client.get_default_database()
    probe = client[f"{db.name}_snapshot"[:60]]  # not the backed-up database
    try:
        for start in range(0, 200, 20):
            probe.c.insert_many([{"_id": i} for i in range(start, start + 20)])
        for sort in ({"_id": 1}, None):
            command: dict[str, Any] = {"find": "c", "filter": {}, "batchSize": 2}
            if sort:
                command["sort"] = sort
            cursor = probe.command(command)["cursor"]
            seen, cursor_id = len(cursor["firstBatch"]), cursor["id"]
            probe.c.insert_one({"_id": 1000})
            probe.c.delete_one({"_id": 150})
            while cursor_id:
                cursor = probe.command({"getMore": cursor_id, "collection": "c", "batchSize": 500})["cursor"]
                seen, cursor_id = seen + len(cursor["nextBatch"]), cursor["id"]
            probe.c.delete_one({"_id": 1000})
            probe.c.insert_one({"_id": 150})
            if seen != 200:
                return False
        return True
    finally:
        client.drop_database(probe.name)
        client.close()


def test_the_backup_takes_a_finds_count_as_before_only_where_the_find_is_a_snapshot(
    mongo_url: str, seeded: Any, server_kind: Any, tmp_path: Path
) -> None:
    ctx = HookedContext(step_id="backup", params=MongoBackup.Params(uri=mongo_url, out="b"), workdir=tmp_path)
    outputs = MongoBackup().run(ctx)

    assert outputs["total_records"] == 302
    counted = sorted(LISTENER.counts)
    if server_kind.ferretdb1:
        # Four collections, four at once: their finds are the "before" figures; only
        # the "after" counts are sent. The property that relies on is checked here.
        assert counted == NAMES
        assert find_reads_one_snapshot(mongo_url), "FerretDB 1.x's find is no longer one snapshot"
    else:
        # Elsewhere a find is not trusted to be a snapshot: before and after, each counted.
        assert counted == sorted(NAMES * 2)


def test_later_collections_are_counted_while_the_first_are_dumped(
    mongo_url: str, seeded: Any, server_kind: Any, tmp_path: Path
) -> None:
    params = MongoBackup.Params(uri=mongo_url, out="b", parallel_collections=2)
    MongoBackup().run(HookedContext(step_id="backup", params=params, workdir=tmp_path))

    if server_kind.ferretdb1:
        # Empty and Property are dumped first (their finds count them); the two others
        # are counted before (meanwhile) and after.
        assert sorted(LISTENER.counts) == sorted([*NAMES, "PropertyBankDetails", "User"])
    else:
        assert sorted(LISTENER.counts) == sorted(NAMES * 2)


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
