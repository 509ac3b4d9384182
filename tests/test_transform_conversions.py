"""Declarative conversions of mongo.transform (convert, lower, upper, trim, replace, lookup), real server."""

from __future__ import annotations

import typing
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from pydantic import Tag, TypeAdapter, ValidationError
from pymongo.database import Database
from test_mongo_transform import context, records, transform
from test_transform_context import finds_on  # noqa: F401  (a fixture)

from migration.steps.mongo.operations import Operation
from migration.steps.mongo.transform import MongoTransform

pytestmark = pytest.mark.mongo


def docs_of(db: Database[Any], name: str) -> dict[Any, dict[str, Any]]:
    return {d["_id"]: d for d in db[name].find()}


def test_convert_to_date_with_formats_leaves_and_lists_invalid_values(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mongo_db.orders.insert_many(
        [
            {"_id": 1, "at": "2024-03-01T10:15:00Z"},
            {"_id": 2, "at": "2024-03-01T12:15:00+02:00"},
            {"_id": 3, "at": "2024-03-01"},
            {"_id": 4, "at": "01/03/2024"},
            {"_id": 5, "at": "soon"},
            {"_id": 6, "at": datetime(2020, 1, 1)},
            {"_id": 7, "at": None},
            {"_id": 8},
            {"_id": 9, "at": 12, "note": "a number is no date text"},
        ]
    )
    operations = [{"convert": {"field": "at", "to": "date", "formats": ["iso8601", "%d/%m/%Y"]}}]
    outputs = transform(mongo_url, tmp_path, collection="orders", operations=operations)
    assert (outputs["migrated"], outputs["invalid"], outputs["skipped"]) == (4, 2, 3)
    docs = docs_of(mongo_db, "orders")
    assert docs[1]["at"] == docs[2]["at"] == datetime(2024, 3, 1, 10, 15)
    assert docs[3]["at"] == docs[4]["at"] == datetime(2024, 3, 1)
    assert docs[5]["at"] == "soon" and docs[9]["at"] == 12  # invalid: left as they were
    invalid = {r["id"]: r["reason"] for r in records(outputs["log"]) if r["status"] == "invalid"}
    assert invalid == {
        5: "convert: at value 'soon' matches none of the date formats iso8601, %d/%m/%Y",
        9: "convert: at value 12 is a int, not date text",
    }
    again = transform(mongo_url, tmp_path, collection="orders", operations=operations)
    assert (again["migrated"], again["invalid"]) == (0, 2)


@pytest.mark.parametrize(
    ("to", "values", "expected", "invalid"),
    [
        ("float", [" 12.50 ", 3, "1e3", "12abc", True], [12.5, 3.0, 1000.0, "12abc", True], 2),
        ("int", ["42", "-7", 5.0, "4.5", "x"], [42, -7, 5, "4.5", "x"], 2),
        ("number", ["42", "4.5", 7, "nan"], [42, 4.5, 7, "nan"], 1),
        (
            "string",
            [12, 2.5, True, datetime(2024, 3, 1, 10, 15, 0, 250000), ObjectId("0123456789abcdef01234567")],
            ["12", "2.5", "true", "2024-03-01T10:15:00.250Z", "0123456789abcdef01234567"],
            0,
        ),
    ],
)
def test_convert_to_numbers_and_strings(
    mongo_url: str,
    mongo_db: Database[Any],
    server_caps: Any,
    tmp_path: Path,
    to: str,
    values: list[Any],
    expected: list[Any],
    invalid: int,
) -> None:
    mongo_db.things.insert_many([{"_id": i, "v": v} for i, v in enumerate(values)])
    outputs = transform(
        mongo_url, tmp_path, collection="things", operations=[{"convert": {"field": "v", "to": to}}]
    )
    docs = docs_of(mongo_db, "things")
    got = [docs[i]["v"] for i in range(len(values))]
    assert got == expected
    assert outputs["invalid"] == invalid
    if any(type(v) is not type(e) and v == e for v, e in zip(values, expected, strict=True)):
        server_caps.skip_without("typed_set")  # 3 -> 3.0 is then a change of type only
    assert [type(g) for g in got] == [type(e) for e in expected]


def test_convert_into_another_field_and_the_unconvertible_policy(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mongo_db.things.insert_many([{"_id": 1, "total": "9.5"}, {"_id": 2, "total": "n/a"}])
    spec = {"field": "total", "to": "float", "into": "amount", "unconvertible": "error"}
    outputs = transform(
        mongo_url, tmp_path, collection="things", operations=[{"convert": spec}], max_errors=5
    )
    assert (outputs["migrated"], outputs["errors"]) == (1, 1)
    assert docs_of(mongo_db, "things")[1] == {"_id": 1, "total": "9.5", "amount": 9.5}


def test_lower_upper_trim_and_replace(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    mongo_db.people.insert_many(
        [
            {
                "_id": 1,
                "status": "SHIPPED",
                "cc": "de",
                "name": "  Ada Lovelace ",
                "phone": "+49 (30) 123-45",
            },
            {"_id": 2, "status": 3, "cc": None, "name": "Bob", "phone": 12345},
            {"_id": 3},
        ]
    )
    operations = [
        {"lower": ["status"]},
        {"upper": ["cc"]},
        {"trim": ["name"]},
        {"replace": {"field": "phone", "regex": "[^0-9+]", "with": ""}},
    ]
    outputs = transform(mongo_url, tmp_path, collection="people", operations=operations)
    assert (outputs["migrated"], outputs["skipped"]) == (1, 2)
    assert docs_of(mongo_db, "people") == {
        1: {"_id": 1, "status": "shipped", "cc": "DE", "name": "Ada Lovelace", "phone": "+493012345"},
        2: {"_id": 2, "status": 3, "cc": None, "name": "Bob", "phone": 12345},  # not text: left alone
        3: {"_id": 3},
    }


def test_lookup_denormalises_with_one_query_per_batch(
    mongo_url: str,
    mongo_db: Database[Any],
    tmp_path: Path,
    finds_on: Any,  # noqa: F811
) -> None:
    mongo_db.customers.insert_many([{"_id": c, "name": f"Customer {c}"} for c in range(20)] + [{"_id": 99}])
    orders = [{"_id": i, "customer_id": i % 22} for i in range(90)]
    orders += [{"_id": 100, "customer_id": 99}, {"_id": 101}, {"_id": 102, "customer_id": None}]
    mongo_db.orders.insert_many(orders)
    lookup = {
        "from": "customers",
        "local": "customer_id",
        "foreign": "_id",
        "field": "name",
        "as": "customer_name",
    }
    counter = finds_on("customers")
    outputs = transform(
        mongo_url, tmp_path, collection="orders", operations=[{"lookup": lookup}], batch_size=25
    )
    assert counter.count == 4  # 93 orders in batches of 25
    dangling = [i for i in range(90) if i % 22 >= 20]
    assert (outputs["migrated"], outputs["invalid"], outputs["skipped"]) == (
        90 - len(dangling) + 1,
        len(dangling),
        2,
    )
    docs = docs_of(mongo_db, "orders")
    assert docs[23]["customer_name"] == "Customer 1"
    assert docs[100]["customer_name"] is None  # the customer has no name
    assert "customer_name" not in docs[dangling[0]]
    reason = next(r["reason"] for r in records(outputs["log"]) if r["id"] == dangling[0])
    assert reason == f"lookup: no customers document has _id {dangling[0] % 22}"

    mongo_db.orders.update_many({}, {"$unset": {"customer_name": ""}})
    again = transform(
        mongo_url, tmp_path, collection="orders", operations=[{"lookup": {**lookup, "missing": "null"}}]
    )
    assert again["invalid"] == 0 and docs_of(mongo_db, "orders")[dangling[0]]["customer_name"] is None


def test_a_lookup_of_a_collection_that_does_not_exist_fails_before_any_write(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    from migration.errors import StepError

    mongo_db.orders.insert_one({"_id": 1, "customer_id": 1})
    lookup = {"from": "custmers", "local": "customer_id", "field": "name", "as": "customer_name"}
    with pytest.raises(StepError, match="lookup: collection 'custmers' does not exist in database"):
        transform(mongo_url, tmp_path, collection="orders", operations=[{"lookup": lookup}])
    assert mongo_db.orders.find_one() == {"_id": 1, "customer_id": 1}


def test_conversions_run_in_workers_as_in_one_process(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    from test_mongo_transform import snapshot, without_log

    mongo_db.customers.insert_many([{"_id": c, "name": f"C{c}"} for c in range(10)])
    for name in ("reference", "parallel"):
        mongo_db[name].insert_many(
            [
                {"_id": i, "s": f" St{i} ", "d": "2024-01-02" if i % 7 else "bad", "c": i % 12}
                for i in range(300)
            ]
        )
    operations = [
        {"trim": ["s"]},
        {"lower": ["s"]},
        {"convert": {"field": "d", "to": "date"}},
        {"lookup": {"from": "customers", "local": "c", "field": "name", "as": "cn"}},
    ]
    reference = transform(
        mongo_url, tmp_path / "r", collection="reference", operations=operations, batch_size=30
    )
    outputs = transform(
        mongo_url, tmp_path / "p", collection="parallel", operations=operations, batch_size=30, workers=2
    )
    assert without_log(outputs) == without_log(reference) and reference["invalid"] > 0
    assert snapshot(mongo_db, "parallel") == snapshot(mongo_db, "reference")


def test_the_dry_run_describes_conversions_and_shows_invalid_samples(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    mongo_db.orders.insert_many([{"_id": 1, "at": "2024-03-01", "status": "NEW"}, {"_id": 2, "at": "never"}])
    operations = [{"convert": {"field": "at", "to": "date"}}, {"lower": ["status"]}]
    text = MongoTransform().preview(context(mongo_url, tmp_path, collection="orders", operations=operations))
    assert "with convert at to date (iso8601); lower status" in text
    assert "! invalid: convert: at value 'never' matches none of the date formats iso8601" in text
    assert mongo_db.orders.find_one({"_id": 1}) == {"_id": 1, "at": "2024-03-01", "status": "NEW"}


@pytest.mark.parametrize(
    ("operation", "message"),
    [
        ({"convert": {"field": "d", "to": "date", "formats": ["dd/mm"]}}, "neither 'iso8601' nor a strptime"),
        ({"convert": {"field": "n", "to": "int", "formats": ["%Y"]}}, "formats are for to: date"),
        ({"convert": {"field": "n", "to": "decimal"}}, "'date', 'int', 'float', 'number' or 'string'"),
        ({"lower": ["_id"]}, "a transform may not change _id"),
        ({"replace": {"field": "p", "regex": "(", "with": ""}}, "does not compile"),
        ({"lookup": {"from": "c", "local": "x", "field": "n"}}, "as"),
        ({"upcase": ["x"]}, "each operation has exactly one key"),
    ],
)
def test_bad_operations_fail_at_load(operation: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(")):
        TypeAdapter(list[Operation]).validate_python([operation])


def test_every_operation_documents_a_yaml_example() -> None:
    union = typing.get_args(Operation)[0]
    for member in typing.get_args(union):
        model, *metadata = typing.get_args(member)
        tag = next(m.tag for m in metadata if isinstance(m, Tag))
        doc = model.__doc__ or ""
        assert "Example:" in doc and "```yaml" in doc and f"  - {tag}:" in doc, tag
