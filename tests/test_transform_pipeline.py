"""Operations the server can run itself (update pipelines), and the choice of path, on the real server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter
from pymongo.collection import Collection
from pymongo.database import Database
from test_mongo_transform import Crash, context, transform, without_log

from migration.steps.mongo import pipeline
from migration.steps.mongo.operations import Operation
from migration.steps.mongo.transform import MongoTransform

pytestmark = pytest.mark.mongo

SERVER_SIDE = [{"trim": ["name"]}, {"lower": ["status"]}, {"set": {"schema": 2}}, {"unset": ["legacy"]}]


def compiled(operations: list[dict[str, Any]]) -> list[Any]:
    return TypeAdapter(list[Operation]).validate_python(operations)


def seed(db: Database[Any], name: str, count: int) -> None:
    db[name].insert_many(
        [
            {"_id": i, "name": f"  Name {i} ", "status": "NEW" if i % 3 else "new", "legacy": i % 2}
            for i in range(count)
        ]
    )


def test_what_needs_python_says_why() -> None:
    assert isinstance(pipeline.server_plan(compiled(SERVER_SIDE)), pipeline.ServerPlan)
    convert = compiled([{"convert": {"field": "d", "to": "date"}}])
    assert (
        pipeline.server_plan(convert)
        == "convert parses values in Python (the servers' parsers accept other text)"
    )
    twice = compiled([{"trim": ["s"]}, {"lower": ["s"]}])
    assert pipeline.server_plan(twice) == "s is changed by more than one operation"
    assert "needs Python" in str(pipeline.server_plan(compiled([{"rename": {"a": "b"}}])))


def test_the_dry_run_says_which_path_and_why(
    mongo_url: str, mongo_db: Database[Any], server_kind: Any, tmp_path: Path
) -> None:
    seed(mongo_db, "people", 3)
    refused = pipeline.probe(mongo_db.people)
    text = MongoTransform().preview(context(mongo_url, tmp_path, collection="people", operations=SERVER_SIDE))
    if refused is None:
        assert "path: server-side (the server has update pipelines" in text
    else:
        assert f"path: client-side batches ({refused})" in text
        assert refused.startswith(("the server has no update pipelines (code ", "the server refused"))
        if server_kind.ferretdb1:
            assert refused.startswith("the server has no update pipelines (code ")
    operations = [{"convert": {"field": "name", "to": "date"}}]
    text = MongoTransform().preview(context(mongo_url, tmp_path, collection="people", operations=operations))
    assert "path: client-side batches (convert parses values in Python" in text
    assert mongo_db.people.count_documents({"legacy": {"$exists": True}}) == 3  # nothing written


def test_the_server_side_path_equals_the_client_side_one_and_resumes(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refused = pipeline.probe(mongo_db.get_collection("probe"))
    if refused is not None:
        pytest.skip(f"this server runs no update pipelines: {refused}")
    seed(mongo_db, "reference", 250)
    seed(mongo_db, "server", 250)
    # The reference runs client-side: the same operations plus one that needs Python.
    reference_ops = [*SERVER_SIDE, {"convert": {"field": "schema", "to": "int"}}]
    transform(mongo_url, tmp_path / "ref", collection="reference", operations=reference_ops)

    saved: dict[str, Any] = {}
    real_update_many = Collection.update_many
    updates = 0

    def dies_after_the_second_chunk(collection: Collection[Any], *args: Any, **kwargs: Any) -> Any:
        nonlocal updates
        result = real_update_many(collection, *args, **kwargs)
        updates += 1
        if updates == 2:
            raise Crash  # written, not yet recorded as done
        return result

    common = {"collection": "server", "operations": SERVER_SIDE, "batch_size": 40}
    with monkeypatch.context() as patched, pytest.raises(Crash):
        patched.setattr(Collection, "update_many", dies_after_the_second_chunk)
        transform(mongo_url, tmp_path / "srv", on_progress=lambda f: saved.update(f), **common)
    assert saved["mode"] == "server" and saved["pending"]["count"] == 40
    outputs = transform(mongo_url, tmp_path / "srv", resume=dict(saved), **common)
    assert (outputs["total"], outputs["migrated"]) == (250, 250)
    assert list(mongo_db.server.find(sort=[("_id", 1)])) == list(mongo_db.reference.find(sort=[("_id", 1)]))
    again = transform(mongo_url, tmp_path / "srv2", **common)
    assert without_log(again) == {**without_log(outputs), "migrated": 0, "skipped": 250}
