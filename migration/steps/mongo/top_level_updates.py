"""The update most transform functions return, applied and diffed without the general machinery.

``Planner.plan`` turns a function's update into an after-state
(``apply_update(doc, update, stored=True)``: a deep copy, the values set given a
BSON round trip) and back into the update to write (``diff``). For ``$set`` and
``$unset`` of top-level fields with plain values, :func:`top_level_update` gives
the same pair for a fraction of the cost; anything else goes the general way.
``tests/test_transform_fast_paths.py`` holds it to the general path's results.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bson.int64 import Int64
from bson.objectid import ObjectId

from migration.steps.mongo.documents import MISSING, same


def top_level_update(doc: dict[str, Any], update: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(after, diff(doc, after))`` with ``after = apply_update(doc, update, stored=True)``, cheaply.

    For the update most functions return: ``$set`` and ``$unset`` of top-level
    fields, none in both, the values set of types BSON gives back as they are
    (text, booleans, null, ObjectIds, 32-bit integers, floats). ``after`` is a
    shallow copy of ``doc`` (it shares the values read, which nothing changes).
    None for any other update: the caller takes the general path, which also
    says what is wrong with it.
    """
    if type(update) is not dict or not update:
        return None
    sets: dict[str, Any] = _NO_FIELDS
    unsets: dict[str, Any] = _NO_FIELDS
    for op, fields in update.items():
        if type(fields) is not dict:
            return None
        if op == "$set":
            sets = fields
        elif op == "$unset":
            unsets = fields
        else:
            return None
    for key in unsets:
        if not _plain_key(key) or key in sets:
            return None
    if not _NO_NAN_TYPES.issuperset(map(type, doc.values())) and _has_nan(doc):
        return None  # diff rewrites a NaN, which never equals itself: keep that path's result
    after = dict(doc)
    changed: list[str] = []
    in_place = False  # whether a field the document has changed (diff orders those as the document)
    for key, value in sets.items():
        kind = type(value)
        if kind not in _STORED_AS_GIVEN or not _plain_key(key):
            return None
        if (kind is int and not _INT32_MIN <= value <= _INT32_MAX) or (kind is str and not _utf8(value)):
            return None
        old = after.get(key, MISSING)
        after[key] = value
        if old is MISSING:
            changed.append(key)
        elif type(old) is kind:
            if old != value:  # same() of two values of one of these types (NaN differs, as there)
                changed.append(key)
                in_place = True
        elif not same(old, value):
            changed.append(key)
            in_place = True
    removed = [key for key in unsets if key in doc]
    if len(removed) > 1:
        removed = [key for key in doc if key in unsets]  # diff's order: the document's
    for key in removed:
        del after[key]
    result: dict[str, Any] = {}
    if changed:
        # diff's order: the fields of ``after`` in their order, which is the order of
        # ``sets`` for fields the document did not have (they are appended).
        if in_place and len(changed) > 1:
            result["$set"] = {key: after[key] for key in after if key in changed}
        else:
            result["$set"] = {key: after[key] for key in changed}
    if removed:
        result["$unset"] = dict.fromkeys(removed, "")
    return after, result


def _plain_key(key: Any) -> bool:
    """A top-level field name a path names as it is (not ``_id``, no dot, no ``$``)."""
    return type(key) is str and key != "" and "." not in key and key[0] != "$" and key != "_id"


def _has_nan(value: Any) -> bool:
    """Whether a float NaN is anywhere in a document (its sub-documents and arrays included)."""
    for item in value.values() if type(value) is dict else value:
        kind = type(item)
        if kind is float:
            if item != item:
                return True
        elif (kind is dict or kind is list) and _has_nan(item):
            return True
    return False


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False  # a lone surrogate: BSON cannot store it
    return True


_NO_FIELDS: dict[str, Any] = {}
# Types of a document's values that hold no NaN (a float, a sub-document or an array may).
_NO_NAN_TYPES = frozenset({str, int, bool, type(None), ObjectId, datetime, Int64})
# Types a BSON round trip gives back equal and of the same type (ints: 32-bit ones).
_STORED_AS_GIVEN = frozenset({str, bool, type(None), ObjectId, int, float})
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
