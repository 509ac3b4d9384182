"""Static checks of MongoDB query filters, so a typo fails when the plan loads.

The server has the last word (steps also run the filter once before changing
anything); this catches what can be known without it: unknown ``$`` operators,
operators given the wrong kind of value, and regular expressions that do not
compile.
"""

from __future__ import annotations

import re
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from migration.errors import StepError

_TOP_LEVEL = {"$and", "$or", "$nor", "$comment", "$expr", "$text", "$where", "$jsonSchema"}
_LIST_OPERATORS = {"$in", "$nin", "$all"}
_FIELD_OPERATORS = _LIST_OPERATORS | {
    "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$exists", "$type", "$regex", "$options",
    "$not", "$elemMatch", "$size", "$mod", "$bitsAllSet", "$bitsAnySet", "$bitsAllClear",
    "$bitsAnyClear", "$geoWithin", "$geoIntersects", "$near", "$nearSphere", "$minDistance",
    "$maxDistance", "$comment",
}  # fmt: skip
_REGEX_FLAGS = {"i": re.IGNORECASE, "m": re.MULTILINE, "s": re.DOTALL, "x": re.VERBOSE, "u": 0}


def compile_regex(pattern: str, options: str = "") -> re.Pattern[str]:
    """Compile a MongoDB-style regex with Python's engine (close to PCRE for common use)."""
    flags = 0
    for letter in options:
        if letter not in _REGEX_FLAGS:
            raise ValueError(f"unknown regex option {letter!r} (use i, m, s, x)")
        flags |= _REGEX_FLAGS[letter]
    try:
        return re.compile(pattern, flags)
    except re.error as exc:
        raise ValueError(f"regular expression {pattern!r} does not compile: {exc}") from None


def check_filter(query: Any, where: str = "filter") -> dict[str, Any]:
    """Raise ValueError naming the first problem in ``query``; return it unchanged."""
    if not isinstance(query, dict):
        raise ValueError(f"{where} must be a document (mapping), got {type(query).__name__}")
    for key, value in query.items():
        if not isinstance(key, str):
            raise ValueError(f"{where}: field names are text, got {key!r}")
        if key.startswith("$"):
            _check_top_level(key, value, f"{where}.{key}")
        else:
            _check_condition(value, f"{where}.{key}")
    return query


def _check_top_level(key: str, value: Any, where: str) -> None:
    if key not in _TOP_LEVEL:
        raise ValueError(f"{where}: unknown top-level operator {key}")
    if key in ("$and", "$or", "$nor"):
        if not isinstance(value, list) or not value:
            raise ValueError(f"{where}: needs a non-empty list of filters")
        for i, part in enumerate(value):
            check_filter(part, f"{where}[{i}]")


def _check_condition(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not any(str(k).startswith("$") for k in value):
        return  # equality with a literal value (or an exact embedded document)
    if not all(str(k).startswith("$") for k in value):
        raise ValueError(f"{where}: cannot mix operators and field names")
    for op, operand in value.items():
        here = f"{where}.{op}"
        if op not in _FIELD_OPERATORS:
            raise ValueError(f"{here}: unknown operator {op}")
        if op in _LIST_OPERATORS and not isinstance(operand, list):
            raise ValueError(f"{here}: needs a list")
        if op == "$regex":
            if not isinstance(operand, (str, re.Pattern)):
                raise ValueError(f"{here}: needs a pattern string")
            if isinstance(operand, str):
                options = value.get("$options", "")
                try:
                    compile_regex(operand, options if isinstance(options, str) else "")
                except ValueError as exc:
                    raise ValueError(f"{here}: {exc}") from None
        elif op == "$options" and "$regex" not in value:
            raise ValueError(f"{here}: $options without $regex")
        elif op == "$not":
            if not isinstance(operand, (dict, re.Pattern)):
                raise ValueError(f"{here}: needs an operator document, e.g. {{$not: {{$gt: 5}}}}")
            if isinstance(operand, dict):
                _check_condition(operand, here)
        elif op == "$elemMatch":
            if not isinstance(operand, dict):
                raise ValueError(f"{here}: needs a document")
            if any(str(k).startswith("$") for k in operand):
                _check_condition(operand, here)
            else:
                check_filter(operand, here)
        elif op == "$size" and (not isinstance(operand, int) or isinstance(operand, bool)):
            raise ValueError(f"{here}: needs a whole number")
        elif op == "$mod" and not (isinstance(operand, list) and len(operand) == 2):
            raise ValueError(f"{here}: needs [divisor, remainder]")


def check_filter_on_server(collection: Collection[Any], query: dict[str, Any], what: str) -> None:
    """Run ``query`` once (one document at most) so the server rejects it before any write."""
    try:
        collection.find_one(query, projection={"_id": 1})
    except OperationFailure as exc:
        message = (exc.details or {}).get("errmsg") or str(exc)
        raise StepError(f"{what} {query!r} rejected by the server: {message}") from exc
