"""Transform functions with ``ctx``: args, lookups through ctx.db, a per-batch hook; real server."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring
from pymongo.database import Database
from test_mongo_transform import Crash, records, snapshot, transform, without_log

from migration.errors import InvalidDocument
from migration.steps.mongo.transform_context import TransformContext, wants_context

pytestmark = pytest.mark.mongo

THIS = "test_transform_context"


# --- transform functions used below ---------------------------------------------------


def tag_with_args(doc: dict[str, Any], ctx: TransformContext) -> dict[str, Any]:
    return {"$set": {"tag": f"{ctx.args['prefix']}-{doc['n']}", "factor": doc["n"] * ctx.args["factor"]}}


def tag_with_optional_ctx(doc: dict[str, Any], ctx: TransformContext | None = None) -> dict[str, Any]:
    assert ctx is not None, "a function with ctx=None is given the context"
    return {"$set": {"tag": f"{ctx.args['prefix']}-{doc['n']}"}}


def name_by_query(doc: dict[str, Any], ctx: TransformContext) -> dict[str, Any]:
    """One query per document: what the batch hook below avoids."""
    customer = ctx.db[ctx.args["customers"]].find_one({"_id": doc["customer_id"]})
    if customer is None:
        raise InvalidDocument(f"no customer {doc['customer_id']}")
    return {"$set": {"customer_name": customer["name"]}}


def fetch_names(docs: list[dict[str, Any]], ctx: TransformContext) -> None:
    ids = sorted({doc["customer_id"] for doc in docs})
    found = ctx.db[ctx.args["customers"]].find({"_id": {"$in": ids}}, {"name": 1})
    ctx.batch["names"] = {c["_id"]: c["name"] for c in found}


def name_from_batch(doc: dict[str, Any], ctx: TransformContext) -> dict[str, Any]:
    name = ctx.batch["names"].get(doc["customer_id"])
    if name is None:
        raise InvalidDocument(f"no customer {doc['customer_id']}")
    ctx.log.info("named", order=doc["_id"])
    return {"$set": {"customer_name": name}}


name_from_batch.prepare_batch = fetch_names  # type: ignore[attr-defined]


def broken_hook(docs: list[dict[str, Any]], ctx: TransformContext) -> None:
    raise RuntimeError("lookup service down")


def uses_broken_hook(doc: dict[str, Any], ctx: TransformContext) -> dict[str, Any]:
    return {"$set": {"x": 1}}


uses_broken_hook.prepare_batch = broken_hook  # type: ignore[attr-defined]


# --- counting the queries the server receives -------------------------------------------


class FindCounter(monitoring.CommandListener):
    """Counts ``find`` commands on one collection of one database (every client in this process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.watch: tuple[str, str] | None = None
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name != "find" or self.watch is None:
            return
        if (event.database_name, event.command.get("find")) == self.watch:
            with self.lock:
                self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COUNTER = FindCounter()
monitoring.register(COUNTER)  # applies to the clients the step opens from here on


@pytest.fixture
def finds_on(mongo_db: Database[Any]) -> Any:
    def start(collection: str) -> FindCounter:
        COUNTER.watch, COUNTER.count = (mongo_db.name, collection), 0
        return COUNTER

    yield start
    COUNTER.watch = None


def seed_orders(db: Database[Any], orders: int, customers: int = 50) -> None:
    db.customers.insert_many([{"_id": c, "name": f"Customer {c}"} for c in range(customers)])
    docs = [{"_id": i, "customer_id": i % (customers + 5), "n": i} for i in range(orders)]
    db.orders.insert_many(docs)


# --- the tests --------------------------------------------------------------------------


def test_signatures_decide_whether_ctx_is_given() -> None:
    def one(doc: Any) -> None: ...
    def two(doc: Any, ctx: Any) -> None: ...
    def defaulted(doc: Any, ctx: Any = None) -> None: ...
    def star(doc: Any, *rest: Any) -> None: ...
    def keyword_only(doc: Any, *, ctx: Any = None) -> None: ...

    assert [wants_context(f) for f in (one, two, defaulted, star, keyword_only)] == [
        False, True, True, True, False,
    ]  # fmt: skip
    assert wants_context(len) is False  # a builtin: called with the document alone


@pytest.mark.parametrize("function", ["tag_with_args", "tag_with_optional_ctx"])
def test_args_reach_a_function_that_takes_ctx(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path, function: str
) -> None:
    mongo_db.things.insert_many([{"_id": i, "n": i} for i in range(30)])
    outputs = transform(
        mongo_url,
        tmp_path,
        collection="things",
        function=f"{THIS}:{function}",
        args={"prefix": "p", "factor": 3},
        batch_size=7,
    )
    assert outputs["migrated"] == 30
    doc = mongo_db.things.find_one({"_id": 4})
    assert doc is not None and doc["tag"] == "p-4"
    if function == "tag_with_args":
        assert doc["factor"] == 12


def test_ctx_db_looks_up_other_collections(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    seed_orders(mongo_db, 120)
    outputs = transform(
        mongo_url,
        tmp_path,
        collection="orders",
        function=f"{THIS}:name_by_query",
        args={"customers": "customers"},
        batch_size=50,
    )
    unknown = [i for i in range(120) if i % 55 >= 50]
    assert (outputs["migrated"], outputs["invalid"]) == (120 - len(unknown), len(unknown))
    order = mongo_db.orders.find_one({"_id": 7})
    assert order is not None and order["customer_name"] == "Customer 7"
    reasons = {r["id"]: r["reason"] for r in records(outputs["log"]) if r["status"] == "invalid"}
    assert reasons[unknown[0]] == f"no customer {unknown[0] % 55}"
    assert "customer_name" not in (mongo_db.orders.find_one({"_id": unknown[0]}) or {})


def test_the_batch_hook_issues_one_query_per_batch(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path, finds_on: Any
) -> None:
    seed_orders(mongo_db, 230)
    counter = finds_on("customers")
    outputs = transform(
        mongo_url,
        tmp_path,
        collection="orders",
        function=f"{THIS}:name_from_batch",
        args={"customers": "customers"},
        batch_size=50,
    )
    assert counter.count == 5  # 230 orders in batches of 50: five $in queries, not 230
    assert outputs["total"] == 230 and outputs["invalid"] == len([i for i in range(230) if i % 55 >= 50])
    assert (mongo_db.orders.find_one({"_id": 201}) or {})["customer_name"] == "Customer 36"

    # The dry run plans the same batches: one query per batch of the documents it shows.
    counter.count = 0
    mongo_db.orders.update_many({}, {"$unset": {"customer_name": ""}})
    from test_mongo_transform import context

    from migration.steps.mongo.transform import MongoTransform

    text = MongoTransform().preview(
        context(
            mongo_url,
            tmp_path,
            collection="orders",
            function=f"{THIS}:name_from_batch",
            args={"customers": "customers"},
            batch_size=50,
            sample=2,
        )
    )
    assert "of the first 200: 185 would change, 0 unchanged, 15 invalid, 0 errors" in text
    assert counter.count == 4


def test_a_failing_batch_hook_makes_its_documents_errors(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mongo_db.things.insert_many([{"_id": i, "n": i} for i in range(10)])
    outputs = transform(
        mongo_url, tmp_path, collection="things", function=f"{THIS}:uses_broken_hook", max_errors=100
    )
    assert (outputs["errors"], outputs["migrated"]) == (10, 0)
    assert records(outputs["log"])[0]["reason"] == "the batch hook failed: RuntimeError: lookup service down"


def test_the_batch_hook_runs_in_each_worker(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    seed_orders(mongo_db, 400)
    mongo_db.reference.insert_many(list(mongo_db.orders.find()))
    common = {"function": f"{THIS}:name_from_batch", "args": {"customers": "customers"}, "batch_size": 40}
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **common)
    outputs = transform(mongo_url, tmp_path / "par", collection="orders", workers=2, **common)
    assert without_log(outputs) == without_log(reference)
    assert snapshot(mongo_db, "orders") == snapshot(mongo_db, "reference")
    assert records(outputs["log"]) == records(reference["log"])


def test_a_resumed_run_with_a_batch_hook_ends_as_an_uninterrupted_one(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    seed_orders(mongo_db, 300)
    mongo_db.reference.insert_many(list(mongo_db.orders.find()))
    common = {"function": f"{THIS}:name_from_batch", "args": {"customers": "customers"}, "batch_size": 40}
    reference = transform(mongo_url, tmp_path / "ref", collection="reference", **common)
    saved: dict[str, Any] = {}
    calls = 0

    def dies_at_the_third_record(fields: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        saved.clear()
        saved.update(fields)
        if calls == 3:
            raise Crash

    with pytest.raises(Crash):
        transform(
            mongo_url, tmp_path / "work", collection="orders", on_progress=dies_at_the_third_record, **common
        )
    outputs = transform(mongo_url, tmp_path / "work", collection="orders", resume=dict(saved), **common)
    assert without_log(outputs) == without_log(reference)
    assert snapshot(mongo_db, "orders") == snapshot(mongo_db, "reference")


def test_the_function_logs_through_the_run_logger(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    from structlog.testing import capture_logs

    seed_orders(mongo_db, 10)
    with capture_logs() as logs:
        transform(
            mongo_url,
            tmp_path,
            collection="orders",
            function=f"{THIS}:name_from_batch",
            args={"customers": "customers"},
        )
    named = [entry for entry in logs if entry["event"] == "named"]
    assert len(named) == 10 and named[0]["step"] == "transform"
