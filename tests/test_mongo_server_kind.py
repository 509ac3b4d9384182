"""Server detection, and the FerretDB 1.x write cap it selects.

FerretDB 1.24 hangs for good on an update command of 50 or more statements (its
PostgreSQL pool is exhausted and it answers nobody until restarted): the product
detects FerretDB 1.x from buildInfo and sends it write commands of at most 20
statements. Other servers (MongoDB, FerretDB 2.x) get no cap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring

from migration.steps.base import StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.common import (
    FERRETDB1_STATEMENTS_PER_COMMAND,
    ServerKind,
    detect_server,
    kind_from_build_info,
)
from migration.steps.mongo.restore import INSERT_BATCH_DOCS, MongoRestore
from migration.steps.mongo.transform import MongoTransform

# buildInfo as each server answers it (the fields detection reads).
BUILD_INFO = {
    "FerretDB 1.24": {"version": "7.0.42", "ferretdbVersion": "v1.24.2", "ok": 1.0},
    "FerretDB 2.7": {"version": "7.0.77", "ferretdb": {"version": "v2.7.0"}, "ok": 1.0},
    "MongoDB 7.0": {"version": "7.0.12", "gitVersion": "x", "ok": 1.0},
}


def test_each_server_is_recognised_from_its_build_info() -> None:
    one, two, mongodb = (kind_from_build_info(BUILD_INFO[k]) for k in BUILD_INFO)
    assert (one.ferretdb, one.ferretdb1, one.statements_per_command) == (True, True, 20)
    assert (two.ferretdb, two.ferretdb1, two.statements_per_command) == (True, False, None)
    assert (mongodb.ferretdb, mongodb.ferretdb1, mongodb.statements_per_command) == (False, False, None)
    assert one.name == "FerretDB v1.24.2 (7.0.42 wire)" and mongodb.name == "MongoDB 7.0.12"
    assert FERRETDB1_STATEMENTS_PER_COMMAND < 50


class StatementCounter(monitoring.CommandListener):
    """Statements per insert/update command, for commands sent while ``active``."""

    def __init__(self) -> None:
        self.active = False
        self.sizes: dict[str, list[int]] = {"insert": [], "update": []}
        self._lock = threading.Lock()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.active or event.command_name not in self.sizes:
            return
        field = "documents" if event.command_name == "insert" else "updates"
        with self._lock:
            self.sizes[event.command_name].append(len(event.command.get(field, [])))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# pymongo has no unregister: one listener for the session, switched on per test.
COUNTER = StatementCounter()
monitoring.register(COUNTER)


@pytest.fixture
def counted() -> Iterator[StatementCounter]:
    COUNTER.sizes = {"insert": [], "update": []}
    COUNTER.active = True
    try:
        yield COUNTER
    finally:
        COUNTER.active = False


def relabel(doc: dict[str, Any]) -> dict[str, Any]:
    return {"$set": {"label": f"item-{doc['_id']}"}}


@pytest.mark.mongo
def test_restore_and_transform_respect_the_detected_cap(
    mongo_url: str, mongo_db: Any, server_kind: ServerKind, tmp_path: Path, counted: StatementCounter
) -> None:
    """Rule: on FerretDB 1.x (detected) no insert or update command carries more than 20
    statements; elsewhere restore inserts in batches of up to 1,000 and transform
    updates a batch in one command."""
    documents = 300
    for start in range(0, documents, 20):  # seeded in commands FerretDB 1.x takes too
        mongo_db.things.insert_many([{"_id": i, "n": i} for i in range(start, start + 20)])
    backup = MongoBackup.Params(uri=mongo_url, out="backups")
    folder = MongoBackup().run(StepContext(step_id="backup", params=backup, workdir=tmp_path))["path"]
    counted.sizes = {"insert": [], "update": []}

    restore = MongoRestore.Params.model_validate({"uri": mongo_url, "from": folder, "drop": True})
    MongoRestore().run(StepContext(step_id="restore", params=restore, workdir=tmp_path))
    transform = MongoTransform.Params.model_validate(
        {"uri": mongo_url, "collection": "things", "function": f"{__name__}:relabel", "batch_size": 100}
    )
    outputs = MongoTransform().run(StepContext(step_id="transform", params=transform, workdir=tmp_path))

    assert outputs["migrated"] == documents
    assert sum(counted.sizes["insert"]) == documents
    assert sum(counted.sizes["update"]) == documents
    assert detect_server(mongo_db.client) == server_kind
    if server_kind.ferretdb1:
        assert max(counted.sizes["insert"]) == FERRETDB1_STATEMENTS_PER_COMMAND
        assert max(counted.sizes["update"]) == FERRETDB1_STATEMENTS_PER_COMMAND
    else:
        assert max(counted.sizes["insert"]) == min(documents, INSERT_BATCH_DOCS)
        assert max(counted.sizes["update"]) == 100
