"""Documents as Python dicts: paths, updates, diffs, guards, and ``_id`` values in JSON.

``mongo.transform`` computes every change in Python (so the log shows exactly what
was written) and writes it as a diff guarded by the values it read. These helpers
are the pieces of that: applying ``$set``/``$unset``/``$rename`` to a dict, turning
a before/after pair back into update operators, building the guard filter, and
comparing documents the way BSON stores them.
"""

from __future__ import annotations

import copy
import json
import math
from datetime import datetime
from typing import Any

import bson
from bson import json_util
from bson.int64 import Int64
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS
from bson.objectid import ObjectId


class _Missing:
    """A path that leads nowhere (the field is absent)."""

    def __repr__(self) -> str:
        return "<missing>"


class _Unaddressable:
    """A path through an array: no single value to read or guard."""

    def __repr__(self) -> str:
        return "<through an array>"


MISSING: Any = _Missing()
UNADDRESSABLE: Any = _Unaddressable()

SUPPORTED_OPERATORS = ("$set", "$unset", "$rename")


class UpdateError(ValueError):
    """An update that cannot be applied to a document (bad operator, path or value)."""


def get_path(doc: Any, path: str) -> Any:
    """The value at a dotted ``path``; MISSING when absent, UNADDRESSABLE through arrays."""
    if "." not in path and type(doc) is dict:
        return doc.get(path, MISSING)
    node = doc
    for part in path.split("."):
        if isinstance(node, list):
            return UNADDRESSABLE
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _check_path(path: str) -> list[str]:
    if path and "." not in path and path[0] != "$" and path != "_id":
        return [path]  # the common case: a top-level field
    parts = path.split(".")
    if not path or any(not p for p in parts):
        raise UpdateError(f"bad field path {path!r}")
    if parts[0].startswith("$") or parts[0] == "_id":
        raise UpdateError(f"a transform may not change {parts[0]!r}")
    return parts


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` to ``value``, creating embedded documents as MongoDB's ``$set`` does."""
    parts = _check_path(path)
    node: Any = doc
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, MISSING)
        if child is MISSING:
            child = node[part] = {}
        elif not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise UpdateError(f"cannot set {path}: {where} holds a {type(child).__name__}, not a document")
        node = child
    node[parts[-1]] = value


def unset_path(doc: dict[str, Any], path: str) -> Any:
    """Remove ``path``; return the removed value, or MISSING when it was absent."""
    parts = _check_path(path)
    node: Any = doc
    for part in parts[:-1]:
        node = node.get(part, MISSING) if isinstance(node, dict) else MISSING
        if not isinstance(node, dict):
            return MISSING
    return node.pop(parts[-1], MISSING)


# Values a copy may share: nothing mutates them in place.
_SHAREABLE = frozenset({str, int, float, bool, type(None), ObjectId, datetime, Int64})


def copy_value(value: Any) -> Any:
    """A deep copy of a document or value as BSON decodes it (``copy.deepcopy``, ~10x faster).

    Dicts and lists are copied; immutable scalars are shared; anything else goes
    through ``copy.deepcopy``.
    """
    kind = type(value)
    if kind in _SHAREABLE:
        return value
    # Scalars are checked inline: a call per field would double the cost.
    if kind is dict:
        return {k: v if type(v) in _SHAREABLE else copy_value(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _SHAREABLE else copy_value(v) for v in value]
    return copy.deepcopy(value)


def apply_update(doc: dict[str, Any], update: dict[str, Any], *, stored: bool = False) -> dict[str, Any]:
    """A copy of ``doc`` with ``update`` (``$set``, ``$unset``, ``$rename``) applied.

    With ``stored``, the ``$set`` values are given their stored form (a BSON round
    trip, as :func:`as_stored`), so for a ``doc`` read from the server the result
    equals ``as_stored`` of it without encoding the whole document again.

    Raises:
        UpdateError: another operator, a replacement document, or a path that
            MongoDB would also refuse (setting inside a scalar, changing ``_id``);
            with ``stored``, a value that cannot be stored.
    """
    if not isinstance(update, dict) or not update:
        raise UpdateError(f"expected update operators or None, got {type(update).__name__}")
    unknown = [op for op in update if op not in SUPPORTED_OPERATORS]
    if unknown:
        raise UpdateError(
            f"unsupported update operator {unknown[0]!r} (use {', '.join(SUPPORTED_OPERATORS)}; "
            "compute other changes in the function and $set the result)"
        )
    after = copy_value(doc)
    for op, fields in update.items():
        if not isinstance(fields, dict):
            raise UpdateError(f"{op} takes a document of fields, got {type(fields).__name__}")
        if op == "$set" and stored:
            fields = dict(zip(fields, _stored_values(list(fields.values())), strict=True))
        for path, value in fields.items():
            if op == "$set":
                set_path(after, path, value if stored else copy_value(value))
            elif op == "$unset":
                unset_path(after, path)
            else:
                if not isinstance(value, str):
                    raise UpdateError(f"$rename of {path} needs a field name, got {value!r}")
                moved = unset_path(after, path)
                if moved is not MISSING:
                    set_path(after, value, moved)
    return after


def same(a: Any, b: Any) -> bool:
    """Equality as stored: ``1``, ``1.0`` and ``True`` differ; key order does not matter."""
    kind = type(a)
    if kind is type(b) and kind in _PLAIN_EQUALITY:
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, float) != isinstance(b, float):
        return False
    return bool(a == b)


# Types whose ``==`` is already equality as stored (same type on both sides).
_PLAIN_EQUALITY = frozenset({str, int, bool, float, type(None), ObjectId, datetime, Int64})


def diff(before: dict[str, Any], after: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Update operators turning ``before`` into ``after`` (dotted paths into sub-documents)."""
    set_fields: dict[str, Any] = {}
    unset_fields: dict[str, Any] = {}
    for key, value in after.items():
        old = before.get(key, MISSING)
        if old is value and type(value) is not float:
            continue  # the very object read (a copy shares its scalars): unchanged
        path = prefix + key
        if old is MISSING:
            set_fields[_writable(path, key)] = value
        elif isinstance(old, dict) and isinstance(value, dict) and old and value:
            nested = diff(old, value, _writable(path, key) + ".")
            set_fields.update(nested.get("$set", {}))
            unset_fields.update(nested.get("$unset", {}))
        elif not same(old, value):
            set_fields[_writable(path, key)] = value
    for key in before:
        if key not in after:
            unset_fields[_writable(prefix + key, key)] = ""
    update: dict[str, Any] = {}
    if set_fields:
        update["$set"] = set_fields
    if unset_fields:
        update["$unset"] = unset_fields
    return update


def _writable(path: str, key: str) -> str:
    if "." in key or key.startswith("$") or not key:
        raise UpdateError(f"field name {path!r} cannot be written by path")
    return path


def is_guardable(value: Any) -> bool:
    """A value an equality filter matches exactly (and FerretDB pushes down)."""
    if isinstance(value, float):
        return not math.isnan(value)
    return isinstance(value, (str, int, ObjectId, datetime))


def guard(doc_id: Any, before: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """The filter of a guarded write: ``_id`` plus the value read at every touched path.

    An absent field is guarded by ``{$exists: false}`` and null by ``{$type: "null"}``
    (``{field: null}`` would also match a missing field). Embedded documents, arrays
    and other non-scalar values are not guarded (equality on them depends on key
    order and types MongoDB and FerretDB treat differently); such a path relies on
    the ``_id`` and the other, scalar fields of the same update.
    """
    condition: dict[str, Any] = {"_id": doc_id}
    for fields in update.values():
        for path in fields:
            value = get_path(before, path)
            if value is MISSING:
                condition[path] = {"$exists": False}
            elif value is None:
                condition[path] = {"$type": "null"}
            elif value is not UNADDRESSABLE and is_guardable(value):
                condition[path] = value
    return condition


def as_stored(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` after a BSON round trip: millisecond datetimes, int64 where needed.

    Raises:
        UpdateError: the document cannot be stored (a non-string key, an unknown type).
    """
    try:
        return bson.decode(bson.encode(doc))
    except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError) as exc:
        raise UpdateError(f"the new document cannot be stored: {exc}") from exc


def _stored_values(values: list[Any]) -> list[Any]:
    try:
        stored: list[Any] = bson.decode(bson.encode({"v": values}))["v"]
    except (bson.errors.InvalidDocument, TypeError, OverflowError, ValueError) as exc:
        raise UpdateError(f"the new document cannot be stored: {exc}") from exc
    return stored


def encode_id(value: Any) -> Any:
    """An ``_id`` as canonical extended JSON (a JSON value that keeps its BSON type)."""
    return json.loads(json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS))


def decode_id(value: Any) -> Any:
    """The inverse of :func:`encode_id`."""
    return json_util.loads(json.dumps(value), json_options=CANONICAL_JSON_OPTIONS)


def id_key(value: Any) -> str:
    """A hashable, type-exact key for an ``_id`` (which may be a document)."""
    return json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data (relaxed extended JSON: ``{"$oid": ...}`` etc.).

    Exactly ``json.loads(json_util.dumps(value))`` in relaxed mode, several times
    faster: the types a decoded document is made of are converted here, anything
    else by ``json_util``.
    """
    kind = type(value)
    if kind in _JSON_SCALARS:
        return value
    if kind is dict and _STR_ONLY.issuperset(map(type, value)):
        return {k: v if type(v) in _JSON_SCALARS else to_json(v) for k, v in value.items()}
    if kind is list:
        return [v if type(v) in _JSON_SCALARS else to_json(v) for v in value]
    if kind is ObjectId:
        return {"$oid": str(value)}
    if kind is float and math.isfinite(value):
        return value
    if kind is Int64:
        return int(value)
    if kind is datetime and value.tzinfo is None and value >= _EPOCH:
        # json_util's relaxed ISO-8601 form of a naive (UTC) datetime after 1970.
        millis = value.microsecond // 1000
        text = value.isoformat(timespec="seconds")
        return {"$date": f"{text}.{millis:03d}Z" if millis else f"{text}Z"}
    return json.loads(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))


_JSON_SCALARS = frozenset({str, int, bool, type(None)})
_STR_ONLY = frozenset({str})
_EPOCH = datetime(1970, 1, 1)


def show_id(value: Any) -> str:
    """An ``_id`` for messages: the hex of an ObjectId, the value otherwise."""
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, str):
        return value
    return json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS)


# BSON sort order of types, by bracket; each bracket as the $type aliases both
# MongoDB and FerretDB 1.x accept (FerretDB lacks decimal, symbol, minKey, maxKey).
_TYPE_BRACKETS: list[tuple[str, ...]] = [
    ("null",),
    ("double", "int", "long"),
    ("string",),
    ("object",),
    ("array",),
    ("binData",),
    ("objectId",),
    ("bool",),
    ("date",),
    ("timestamp",),
    ("regex",),
]


def _bracket(value: Any) -> int | None:
    if value is None:
        return 0
    if isinstance(value, bool):
        return 7
    if isinstance(value, (int, float, Int64)):
        return 1
    if isinstance(value, str):
        return 2
    if isinstance(value, dict):
        return 3
    if isinstance(value, (bytes, bson.Binary)) or type(value).__name__ == "UUID":
        return 5
    if isinstance(value, ObjectId):
        return 6
    if isinstance(value, datetime):
        return 8
    if isinstance(value, bson.Timestamp):
        return 9
    if isinstance(value, bson.Regex):
        return 10
    return None


def after_id(last_id: Any) -> dict[str, Any]:
    """A filter for the ``_id`` values that sort after ``last_id``.

    ``$gt`` compares only within one BSON type, so documents whose ``_id`` has a
    type that sorts later (e.g. a date after ObjectIds) are added by ``$type``.
    """
    greater: dict[str, Any] = {"_id": {"$gt": last_id}}
    bracket = _bracket(last_id)
    if bracket is None:
        return greater
    later = [alias for group in _TYPE_BRACKETS[bracket + 1 :] for alias in group]
    if not later:
        return greater
    return {"$or": [greater, {"_id": {"$type": later}}]}


def _type_aliases(brackets: list[tuple[str, ...]]) -> list[str]:
    return [alias for group in brackets for alias in group]


def id_at_or_after(bound: Any) -> dict[str, Any]:
    """A filter for the ``_id`` values that sort at or after ``bound`` (BSON order, across types)."""
    bracket = _bracket(bound)
    condition: dict[str, Any] = {"_id": {"$gte": bound}}
    later = [] if bracket is None else _type_aliases(_TYPE_BRACKETS[bracket + 1 :])
    return {"$or": [condition, {"_id": {"$type": later}}]} if later else condition


def id_before(bound: Any) -> dict[str, Any]:
    """A filter for the ``_id`` values that sort before ``bound``: the complement of
    :func:`id_at_or_after` for every ``_id`` of a bracketed type."""
    bracket = _bracket(bound)
    condition: dict[str, Any] = {"_id": {"$lt": bound}}
    earlier = [] if bracket is None else _type_aliases(_TYPE_BRACKETS[:bracket])
    return {"$or": [condition, {"_id": {"$type": earlier}}]} if earlier else condition


# _id types whose order both MongoDB and FerretDB 1.x compare alike in range filters.
RANGE_ID_TYPES = frozenset({int, Int64, float, str, ObjectId, datetime})


def is_range_id(value: Any) -> bool:
    """Whether ``_id`` ranges can be cut at ``value`` (and must include it) portably."""
    return type(value) in RANGE_ID_TYPES and not (type(value) is float and math.isnan(value))
