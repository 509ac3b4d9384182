"""The transform's writes as ``update`` commands (``update_command``), against the real server.

Each chunk of guarded updates is one unordered ``update`` command sent as it is
(not ``bulk_write``). These tests hold what ``bulk_write`` gave: write errors with
their codes, conflicts classified by a re-read, FerretDB 1.x's quirks handled one
statement at a time, a chunk too large for one command split, and a command
retried after a lost reply counted as migrated, not as a conflict.
"""

from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import pytest
from pymongo import WriteConcern
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import AutoReconnect, DocumentTooLarge, OperationFailure

from migration.steps.base import StepContext
from migration.steps.mongo import update_command
from migration.steps.mongo.documents import apply_update, diff
from migration.steps.mongo.guarded_writes import GuardedWriter, Planned
from migration.steps.mongo.transform import MongoTransform
from migration.steps.mongo.update_command import (
    UpdateCommand,
    is_retryable,
    retries_writes,
    write_concern_failure,
)

pytestmark = pytest.mark.mongo


def planned(doc: dict[str, Any], update: dict[str, Any]) -> Planned:
    after = apply_update(doc, update, stored=True)
    return Planned(doc["_id"], doc, "write", after=after, update=diff(doc, after))


def read_all(collection: Collection[Any]) -> list[dict[str, Any]]:
    return list(collection.find(sort=[("_id", 1)]))


def seed(db: Database[Any], count: int) -> list[dict[str, Any]]:
    for start in range(0, count, 20):  # commands FerretDB 1.x takes
        db.things.insert_many(
            [{"_id": n, "code": f"code-{n}", "n": n} for n in range(start, min(count, start + 20))]
        )
    return read_all(db.things)


def statuses(outcomes: list[Any]) -> list[str]:
    return [o.status for o in outcomes]


def test_write_errors_conflicts_and_migrated_in_one_chunk(mongo_db: Database[Any], server_kind: Any) -> None:
    docs = seed(mongo_db, 6)
    mongo_db.things.create_index("code", unique=True, name="code_unique")
    updates = [planned(d, {"$set": {"code": f"new-{d['n']}", "done": True}}) for d in docs]
    updates[1] = planned(docs[1], {"$set": {"code": "new-0"}})  # a duplicate of document 0's new code
    mongo_db.things.update_one({"_id": 2}, {"$set": {"code": "changed by the app"}})  # a conflict
    mongo_db.things.update_one({"_id": 3}, {"$set": {"other": 1}})  # untouched paths: still applies
    mongo_db.things.delete_one({"_id": 4})  # deleted: a conflict
    outcomes = GuardedWriter(mongo_db.things, server_kind.ferretdb1, str).write(updates)
    assert statuses(outcomes) == ["migrated", "error", "conflict", "migrated", "conflict", "migrated"]
    expected = "1" if server_kind.ferretdb1 else "11000"  # FerretDB 1.x: code 1 (SQLSTATE 23505)
    assert re.search(rf"\(code {expected}\)$", outcomes[1].reason or ""), outcomes[1].reason
    assert outcomes[2].current is not None and outcomes[2].current["code"] == "changed by the app"
    assert "deleted" in (outcomes[4].reason or "")
    by_id = {d["_id"]: d for d in read_all(mongo_db.things)}
    assert by_id[1]["code"] == "code-1" and "done" not in by_id[1]
    assert by_id[2]["code"] == "changed by the app" and "done" not in by_id[2]
    assert by_id[3] == {"_id": 3, "code": "new-3", "n": 3, "other": 1, "done": True}
    assert by_id[5]["code"] == "new-5" and by_id[5]["done"] is True


def test_a_chunk_applied_again_is_migrated(mongo_db: Database[Any], server_kind: Any) -> None:
    docs = seed(mongo_db, 5)
    updates = [planned(d, {"$set": {"label": "x"}, "$unset": {"code": ""}}) for d in docs]
    writer = GuardedWriter(mongo_db.things, server_kind.ferretdb1, str)
    assert statuses(writer.write(updates)) == ["migrated"] * 5
    after = read_all(mongo_db.things)
    assert statuses(writer.write(updates)) == ["migrated"] * 5  # guards fail, the re-read says applied
    assert read_all(mongo_db.things) == after


def test_a_reply_without_counts_is_resolved_one_statement_at_a_time(
    mongo_db: Database[Any], server_kind: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FerretDB 1.x leaves ``n`` out of a reply with write errors: each statement is then
    sent alone (the applied ones fail their guard and are re-read as migrated)."""
    docs = seed(mongo_db, 4)
    mongo_db.things.create_index("code", unique=True, name="code_unique")
    real = UpdateCommand._run

    def without_counts(command: UpdateCommand, statements: Any) -> dict[str, Any]:
        reply = real(command, statements)
        return {k: v for k, v in reply.items() if k not in ("n", "nModified")}

    updates = [planned(d, {"$set": {"code": f"new-{d['n']}"}}) for d in docs]
    updates[2] = planned(docs[2], {"$set": {"code": "new-0"}})
    monkeypatch.setattr(UpdateCommand, "_run", without_counts)
    outcomes = GuardedWriter(mongo_db.things, server_kind.ferretdb1, str).write(updates)
    assert statuses(outcomes) == ["migrated", "migrated", "error", "migrated"]
    assert [d["code"] for d in read_all(mongo_db.things)] == ["new-0", "new-1", "code-2", "new-3"]


def test_a_chunk_too_large_for_one_command_goes_through_bulk_write(
    mongo_db: Database[Any], server_kind: Any
) -> None:
    docs = seed(mongo_db, 5)
    big = "x" * (4 * 1024 * 1024)  # five of them exceed one command's 16 MB
    updates = [planned(d, {"$set": {"blob": big}}) for d in docs]
    with pytest.raises(DocumentTooLarge):  # refused before anything is sent
        UpdateCommand(mongo_db.things).send([({"_id": p.doc_id}, p.update) for p in updates])
    assert mongo_db.things.count_documents({"blob": {"$exists": True}}) == 0
    outcomes = GuardedWriter(mongo_db.things, server_kind.ferretdb1, str).write(updates)
    assert statuses(outcomes) == ["migrated"] * 5
    assert mongo_db.things.count_documents({"blob": {"$exists": True}}) == 5


def test_a_lost_reply_is_retried_where_pymongo_retries_and_counts_as_migrated(
    mongo_db: Database[Any], server_kind: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first attempt is applied, then the connection drops before its reply: the
    retry's guards fail and the re-read finds every document in its after-state."""
    docs = seed(mongo_db, 4)
    real = UpdateCommand._run
    attempts: list[int] = []

    def lose_first_reply(command: UpdateCommand, statements: Any) -> dict[str, Any]:
        reply = real(command, statements)
        attempts.append(len(statements))
        if len(attempts) == 1:
            raise AutoReconnect("connection closed (injected, after the command was applied)")
        return reply

    monkeypatch.setattr(UpdateCommand, "_run", lose_first_reply)
    writer = GuardedWriter(mongo_db.things, server_kind.ferretdb1, str)
    writer.command.retry = True  # as on a replica set with retryWrites (the test server is standalone)
    outcomes = writer.write([planned(d, {"$set": {"v": 2}}) for d in docs])
    assert statuses(outcomes) == ["migrated"] * 4 and attempts == [4, 4]
    assert [d["v"] for d in read_all(mongo_db.things)] == [2] * 4

    attempts.clear()
    writer.command.retry = False  # a standalone server: pymongo would not retry, nor do we
    with pytest.raises(AutoReconnect):
        writer.write([planned(d, {"$set": {"v": 3}}) for d in read_all(mongo_db.things)])


def test_retry_rules_follow_pymongo(mongo_db: Database[Any]) -> None:
    assert is_retryable(AutoReconnect("x"))
    assert not is_retryable(OperationFailure("dup", code=11000))
    assert is_retryable(OperationFailure("x", code=189, details={"errorLabels": ["RetryableWriteError"]}))
    kind = mongo_db.client.topology_description.topology_type_name
    assert retries_writes(mongo_db.things) == (kind in update_command._RETRYING_TOPOLOGIES)


def test_the_collection_write_concern_is_sent(mongo_db: Database[Any]) -> None:
    seed(mongo_db, 1)
    assert UpdateCommand(mongo_db.things).write_concern is None  # the server's default: none sent
    concerned = mongo_db.get_collection("things", write_concern=WriteConcern(w=1, j=True))
    command = UpdateCommand(concerned)
    assert command.write_concern == {"w": 1, "j": True}
    reply = command.send([({"_id": 0, "n": 0}, {"$set": {"n": 1}})])
    assert reply["n"] == 1 and mongo_db.things.find_one({"_id": 0}, {"n": 1}) == {"_id": 0, "n": 1}


def test_the_batch_loop_freezes_old_objects_only_while_it_runs(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    """``gc.freeze`` keeps full collections off the objects that existed before the loop;
    they are handed back when it ends, and a freeze made by someone else is left alone."""
    seed(mongo_db, 30)
    counts: list[int] = []

    def record(fields: dict[str, Any]) -> None:
        counts.append(gc.get_freeze_count())

    params = {"uri": mongo_url, "collection": "things", "function": f"{__name__}:mark", "batch_size": 10}
    ctx = StepContext(
        step_id="t", params=MongoTransform.Params.model_validate(params), workdir=tmp_path, on_progress=record
    )
    assert gc.get_freeze_count() == 0
    assert MongoTransform().run(ctx)["migrated"] == 30
    assert counts and all(count > 0 for count in counts[1:])  # frozen while the batches ran
    assert gc.get_freeze_count() == 0

    gc.freeze()  # someone else's freeze (a pre-fork server, say) is theirs to undo
    try:
        frozen = gc.get_freeze_count()
        params["log_dir"] = "again"
        ctx = StepContext(step_id="t", params=MongoTransform.Params.model_validate(params), workdir=tmp_path)
        MongoTransform().run(ctx)
        assert gc.get_freeze_count() > frozen // 2  # not unfrozen by the loop (some were freed)
    finally:
        gc.unfreeze()


def mark(doc: dict[str, Any]) -> dict[str, Any]:
    return {"$set": {"marked": True}}


TIMED_OUT = "waiting for replication timed out"


@pytest.mark.parametrize(
    "reply",
    [
        # an update command's reply
        {"n": 3, "nModified": 3, "writeConcernError": {"code": 64, "errmsg": TIMED_OUT}},
        # a BulkWriteError's details
        {"nMatched": 3, "writeConcernErrors": [{"code": 64, "errmsg": TIMED_OUT}]},
    ],
)
def test_a_write_concern_error_fails_the_step_saying_what_happened(reply: dict[str, Any]) -> None:
    # No server here refuses a write concern (FerretDB and the wire server accept w: 50),
    # so the reply is written out as MongoDB sends it (code 64 WriteConcernFailed).
    failed = write_concern_failure(reply, {"w": "majority", "wtimeout": 5000})
    assert failed is not None
    assert str(failed) == (
        "the server applied a batch but could not confirm the write concern "
        "{'w': 'majority', 'wtimeout': 5000}: waiting for replication timed out (code 64); "
        "the batch is journaled: a re-run re-reads it and finishes it"
    )
    assert write_concern_failure({"n": 3, "nModified": 3}, None) is None
    assert write_concern_failure({"nMatched": 3, "writeConcernErrors": []}, None) is None
