"""mongo.restore's verify levels: what each reads from the server, and what it reports.

``inserts`` reads nothing back (the server's acknowledgements are the proof),
``counts`` one count per collection, ``checksums`` every document (or ``dbHash``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring
from test_mongo_backup_restore import backup_ctx, restore_ctx, seed

from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.checksums import collection_checksum
from migration.steps.mongo.restore import MongoRestore
from migration.steps.mongo.restore_data import DumpedCollection, verify_collection

pytestmark = pytest.mark.mongo

READS = {"aggregate", "count", "find", "getMore", "dbHash"}


class Reads(monitoring.CommandListener):
    """The reads of documents sent to one database while ``database`` names it."""

    def __init__(self) -> None:
        self.database = ""
        self.seen: list[str] = []
        self.lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.database_name == self.database and event.command_name in READS:
            with self.lock:
                self.seen.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


LISTENER = Reads()
monitoring.register(LISTENER)  # for clients made from now on; records one database only


@pytest.fixture
def backup(mongo_db: Any, mongo_url: str, tmp_path: Path) -> str:
    seed(mongo_db)
    path: str = MongoBackup().run(backup_ctx(tmp_path, uri=mongo_url))["path"]
    return path


def restore(mongo_db: Any, mongo_url: str, tmp_path: Path, folder: str, **params: Any) -> dict[str, Any]:
    LISTENER.database, LISTENER.seen = mongo_db.name, []
    try:
        outputs: dict[str, Any] = MongoRestore().run(
            restore_ctx(tmp_path, uri=mongo_url, drop=True, **{"from": folder}, **params)
        )
    finally:
        LISTENER.database = ""
    return outputs


def test_verify_inserts_reads_nothing_back(
    mongo_db: Any, mongo_url: str, backup: str, tmp_path: Path
) -> None:
    before = {n: collection_checksum(mongo_db, n) for n in mongo_db.list_collection_names()}

    outputs = restore(mongo_db, mongo_url, tmp_path, backup, verify="inserts")

    assert outputs["verified"] == "inserts"
    assert outputs["verified_by"] == dict.fromkeys(
        ["Empty", "Property", "PropertyBankDetails", "User"], "inserts"
    )
    assert outputs["restored"] == {"Empty": 0, "Property": 200, "PropertyBankDetails": 42, "User": 60}
    assert LISTENER.seen == []
    assert {n: collection_checksum(mongo_db, n) for n in before} == before


def test_verify_counts_sends_one_count_per_collection(
    mongo_db: Any, mongo_url: str, backup: str, tmp_path: Path
) -> None:
    outputs = restore(mongo_db, mongo_url, tmp_path, backup, verify="counts", parallel_collections=1)

    assert outputs["verified"] == "counts"
    assert set(outputs["verified_by"].values()) == {"count"}
    # count_documents is an aggregate; nothing else is read (the drop checks read no documents).
    assert sorted(LISTENER.seen) == ["aggregate"] * 4


def test_acknowledged_inserts_must_be_the_dumps_count_at_every_level(
    mongo_db: Any, mongo_url: str, backup: str, tmp_path: Path
) -> None:
    restore(mongo_db, mongo_url, tmp_path, backup, verify="inserts")
    user = DumpedCollection(
        name="User", bson=Path("unused"), metadata=None, count=60, sha256=None, checksum=None
    )

    for level in ("inserts", "counts", "checksums"):
        found, problem, how = verify_collection(mongo_db, user, {}, level, False, 59)
        assert (found, how) == (59, "inserts")
        assert problem == "User: the server acknowledged 59 documents, the dump has 60"
    assert verify_collection(mongo_db, user, {}, "inserts", False, 60) == (60, None, "inserts")
    # Not known (mongorestore, an earlier attempt): one count instead.
    assert verify_collection(mongo_db, user, {}, "inserts", False, None) == (60, None, "count")
