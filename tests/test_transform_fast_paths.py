"""The transform's fast paths give exactly what the slow, obvious code gives.

``to_json``, ``copy_value``, ``apply_update(stored=True)``, the record log's line
and the raw-BSON in-flight journal replace ``json_util``, ``copy.deepcopy`` and a
whole-document BSON round trip on the per-document path; these tests hold them to
the results of the code they replaced, over every BSON type.
"""

from __future__ import annotations

import copy
import json
import math
import re
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import bson
import pytest
from bson import (
    SON,
    Binary,
    Code,
    DBRef,
    Decimal128,
    Int64,
    MaxKey,
    MinKey,
    ObjectId,
    Regex,
    Timestamp,
    json_util,
)
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS

from migration.steps.mongo.documents import (
    UpdateError,
    apply_update,
    as_stored,
    copy_value,
    diff,
    same,
    to_json,
)
from migration.steps.mongo.record_log import InflightJournal, RecordLog, split_raw
from migration.steps.mongo.top_level_updates import top_level_update


def slow_to_json(value: Any) -> Any:
    return json.loads(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))


OID = ObjectId("5ff2eb3104689a0100000000")
VALUES: list[Any] = [
    None, True, False, 0, -1, 2**31, 2**62, Int64(5), Int64(-(2**63)), 1.5, -0.0, 1e300,
    float("nan"), float("inf"), float("-inf"), "", "text", "ünïcödé ✓", "a\u0000b", OID,
    datetime(2021, 1, 4, 10, 17, 21), datetime(2021, 1, 4, 10, 17, 21, 123456),
    datetime(2021, 1, 4, 10, 17, 21, 999), datetime(1970, 1, 1), datetime(1969, 12, 31, 23, 59, 59),
    datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59, 999000),
    datetime(2021, 1, 4, tzinfo=UTC), datetime(2021, 1, 4, tzinfo=timezone(timedelta(hours=2))),
    b"bytes", Binary(b"\x00\x01", 0), Binary(b"x" * 16, 4), uuid.UUID(int=7), Decimal128("1.10"),
    Regex("^a", "i"), re.compile("^b", re.I), Timestamp(5, 1), Code("function () {}"),
    Code("f", {"x": 1}), MinKey(), MaxKey(), DBRef("c", OID), SON([("b", 1), ("a", OID)]),
    [1, "two", [OID, {"x": None}]], (1, 2), {"nested": {"deeper": [datetime(2020, 2, 2)]}},
    {1: "int key"}, {"k": {2.5: "float key"}}, {},
]  # fmt: skip


def outcome(convert: Any, value: Any) -> str:
    """The JSON text of the conversion, or the exception it raised."""
    try:
        return json.dumps(convert(value))
    except Exception as exc:
        return f"raised {type(exc).__name__}"


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_to_json_is_json_util_relaxed(value: Any) -> None:
    assert outcome(to_json, value) == outcome(slow_to_json, value)
    nested = {"v": value, "w": [value]}
    assert outcome(to_json, nested) == outcome(slow_to_json, nested)


def _old_line(doc_id: Any, status: str, reason: Any, before: Any, after: Any, current: Any = None) -> str:
    record: dict[str, Any] = {
        "id": doc_id,
        "status": status,
        "reason": reason,
        "before": before,
        "after": after,
    }
    if current is not None:
        record["current"] = current
    return json.dumps(slow_to_json(record), ensure_ascii=False, separators=(",", ":"))


def test_record_log_lines_are_what_json_util_wrote(tmp_path: Path) -> None:
    writable = [v for v in VALUES if not isinstance(v, uuid.UUID)]  # json_util refuses a UUID
    before = {"_id": OID, "v": writable, "d": {"x": 1, "when": datetime(2021, 1, 1, 1, 1, 1, 5000)}}
    for value in writable:
        before[f"f{len(before)}"] = value
    after = copy_value(before)
    after["new"] = "value"
    after["d"]["x"] = 2
    after["d"]["y"] = Decimal128("2.5")
    del after["v"]
    cases = [
        (OID, "migrated", None, before, after, None),
        (1, "invalid", "why ✓", before, None, None),
        ("s", "conflict", "changed", before, after, {"_id": "s", "x": float("nan")}),
        ({"a": 1}, "skipped", "no change", {"_id": {"a": 1}}, None, None),
    ]
    log = RecordLog(tmp_path / "log.json")
    for case in cases:
        log.write(*case)
    log.close()
    lines = (tmp_path / "log.json").read_text(encoding="utf-8").splitlines()
    assert lines == [_old_line(*case) for case in cases]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_copy_value_is_a_deep_copy(value: Any) -> None:
    doc = {"a": value, "b": [value, {"c": value}], "d": {"e": [1, [2]]}}
    copied = copy_value(doc)
    assert repr(copied) == repr(copy.deepcopy(doc))
    copied["b"][1]["c"] = "changed"
    copied["d"]["e"][1].append(3)
    assert doc["b"][1]["c"] is value and doc["d"]["e"] == [1, [2]]


UPDATES: list[dict[str, Any]] = [
    {"$set": {"a": datetime(2021, 1, 1, 0, 0, 0, 123456), "t": (1, 2), "big": 2**40}},
    {"$set": {"x.y.z": {"k": [1, (2, 3)]}}, "$unset": {"gone": ""}},
    {"$rename": {"keep": "renamed"}, "$set": {"keep": Int64(3)}},
    {"$unset": {"a": ""}, "$set": {"a": "again"}},
    {"$set": {"u": uuid.UUID(int=3)}},  # cannot be stored: both refuse it
]


@pytest.mark.parametrize("update", UPDATES, ids=repr)
def test_apply_update_stored_equals_a_whole_round_trip(update: dict[str, Any]) -> None:
    doc = bson.decode(bson.encode({"_id": OID, "a": 1, "keep": "k", "gone": [1], "x": {"w": 1}}))

    def fast() -> bytes:
        return bson.encode(apply_update(doc, update, stored=True))

    def slow() -> bytes:
        return bson.encode(as_stored(apply_update(doc, update)))

    assert outcome(lambda f: f().hex(), fast) == outcome(lambda f: f().hex(), slow)
    assert doc == bson.decode(bson.encode({"_id": OID, "a": 1, "keep": "k", "gone": [1], "x": {"w": 1}}))


def test_apply_update_stored_refuses_what_cannot_be_stored() -> None:
    with pytest.raises(UpdateError, match="cannot be stored"):
        apply_update({"_id": 1}, {"$set": {"a": {1: "int key"}}}, stored=True)
    with pytest.raises(UpdateError, match="cannot be stored"):
        apply_update({"_id": 1}, {"$set": {"a": object()}}, stored=True)


def test_diff_and_same_keep_their_meaning() -> None:
    nan = float("nan")
    doc = {"_id": 1, "n": nan, "i": 1, "b": True, "s": SON([("a", 1), ("b", 2)])}
    after = copy_value(doc)
    assert diff(doc, after) == {"$set": {"n": nan}}  # NaN never equals itself, as before
    assert same(1, Int64(1)) and not same(1, 1.0) and not same(1, True) and not same(True, 1)
    assert same(SON([("a", 1), ("b", 2)]), SON([("b", 2), ("a", 1)]))
    assert not same(datetime(2021, 1, 1), datetime(2021, 1, 2))
    assert math.isnan(diff({"x": 1.0}, {"x": nan})["$set"]["x"])


def test_inflight_journal_round_trip_and_its_earlier_format(tmp_path: Path) -> None:
    journal = InflightJournal(tmp_path / "log.json")
    docs = [{"_id": OID, "v": Decimal128("1.5")}, {"_id": {"k": 1}, "v": datetime(2021, 1, 1)}]
    raws = [bson.encode(d) for d in docs]
    journal.save(Int64(7), raws)
    assert journal.load(7) == {}  # an int is not the Int64 the batch followed
    loaded = journal.load(Int64(7))
    assert list(loaded.values()) == raws
    journal.save(None, raws)
    assert list(journal.load(None).values()) == raws
    legacy = json_util.dumps({"after": OID, "docs": docs}, json_options=CANONICAL_JSON_OPTIONS)
    journal.path.write_text(legacy, encoding="utf-8")
    assert [bson.decode(raw) for raw in journal.load(OID).values()] == docs
    journal.remove()
    assert journal.load(None) == {} and not journal.path.exists()


def test_split_raw_cuts_concatenated_documents_and_refuses_a_torn_one() -> None:
    raws = [bson.encode({"_id": i, "x": "y" * i}) for i in range(5)]
    assert split_raw(b"".join(raws)) == raws
    assert split_raw(b"") == []
    with pytest.raises(ValueError, match="truncated"):
        split_raw(b"".join(raws)[:-3])


# --- top_level_update: the general path's (after, diff) for the common update ----------

BASE = {"_id": OID, "a": 1, "s": "text", "n": None, "f": 1.5, "d": {"x": 1}, "l": [1, {"y": 2}],
        "t": datetime(2021, 1, 1), "big": Int64(2**40)}  # fmt: skip
TOP_LEVEL: list[tuple[dict[str, Any], Any]] = [
    (BASE, {"$set": {"a": 2, "new": "v", "s": "text"}, "$unset": {"n": "", "absent": ""}}),
    (BASE, {"$set": {"zz": True, "aa": None, "a": 1}}),  # new fields keep the function's order
    (BASE, {"$set": {"t": "now text", "a": "one", "f": 1.5}}),  # existing fields keep the document's
    (BASE, {"$set": {"f": 1}}),  # 1 is not 1.5, nor is 1 the same as 1.0
    (BASE, {"$set": {"a": 1.0}}),
    (BASE, {"$set": {"a": True}}),
    (BASE, {"$set": {"o": OID, "x": -(2**31), "y": 2**31 - 1}}),
    (BASE, {"$unset": {"d": "", "l": 1}}),
    (BASE, {"$unset": {"l": "", "d": ""}}),  # unset in the document's order, as diff does
    (BASE, {"$set": {"s": "x", "brand_new": 1, "a": 2}}),  # changed in place, then appended
    (BASE, {"$set": {"a": 1}}),  # no change
    (BASE, {"$set": {"f": float("nan")}}),
    ({"_id": 1, "i": Int64(5), "j": Int64(6)}, {"$set": {"i": 5, "j": 7}}),  # Int64(5) is stored 5
    (BASE, {"$set": {}}),
    (BASE, {}),
    ({"_id": 1, "nan": float("nan"), "a": 1}, {"$set": {"a": 2}}),  # NaN: the general path
    ({"_id": 1, "deep": {"l": [float("nan")]}}, {"$set": {"a": 2}}),
    (BASE, {"$set": {"big": 2**31}}),  # stored as Int64: the general path
    (BASE, {"$set": {"when": datetime(2021, 1, 1, 0, 0, 0, 123456)}}),  # milliseconds: general
    (BASE, {"$set": {"d": {"x": 2}}}),  # a sub-document: general (diff goes inside)
    (BASE, {"$set": {"d.x": 2}}),
    (BASE, {"$set": {"_id": 5}}),
    (BASE, {"$set": {"a": 2}, "$unset": {"a": ""}}),
    (BASE, {"$rename": {"a": "b"}}),
    (BASE, {"$inc": {"a": 1}}),
    (BASE, {"$set": {"$bad": 1}}),
    (BASE, {"$set": {"": 1}}),
    (BASE, {"$set": {"s": "lone \ud800 surrogate"}}),
    (BASE, {"$set": {"s": "ünïcödé"}}),
    (BASE, {"$set": {"s": Code("x")}}),  # a str subclass: general
    (BASE, {"$set": ["not", "a", "dict"]}),
    (BASE, "not an update"),
]


def general(doc: dict[str, Any], update: Any) -> Any:
    try:
        after = apply_update(doc, update, stored=True)
        return list(after.items()), [(op, list(fields.items())) for op, fields in diff(doc, after).items()]
    except UpdateError as exc:
        return f"UpdateError: {exc}"


@pytest.mark.parametrize(("doc", "update"), TOP_LEVEL, ids=repr)
def test_top_level_update_is_the_general_path(doc: dict[str, Any], update: Any) -> None:
    doc = bson.decode(bson.encode(doc))
    kept = repr(doc)
    quick = top_level_update(doc, update)
    if quick is not None:
        after, written = quick
        got = list(after.items()), [(op, list(fields.items())) for op, fields in written.items()]
        assert repr(got) == repr(general(doc, update))
    assert repr(doc) == kept  # the document read is left as it was


def test_top_level_update_takes_the_recipes_updates() -> None:
    doc = bson.decode(bson.encode({**BASE, "swift_bic_iban": " GB82 WEST 1234 5698 7654 32 "}))
    update = {"$set": {"iban_number": "GB82WEST12345698765432", "swift_bic_number": None},
              "$unset": {"swift_bic_iban": ""}}  # fmt: skip
    quick = top_level_update(doc, update)
    assert quick is not None and repr(list(quick[0].items())) == repr(general(doc, update)[0])
    assert quick[1] == update
