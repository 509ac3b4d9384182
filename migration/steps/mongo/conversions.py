"""Declarative value conversions of ``mongo.transform``: convert, lower, upper, trim, replace.

Each operation changes the value of named fields of the document copy it is
given, in place; a value it cannot convert raises :class:`OperationOutcome`
(by the operation's ``unconvertible`` policy), so the whole document is left as
it was, counted and logged with the reason. A field that is absent is no
change. :func:`server_expression` gives the aggregation expression that does
the same on the server, for the operations that map onto one cleanly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal

from bson.int64 import Int64
from bson.objectid import ObjectId
from pydantic import Field, field_validator, model_validator

from migration.steps.base import StepParams
from migration.steps.mongo.documents import MISSING, UNADDRESSABLE, get_path, set_path
from migration.steps.mongo.operation_base import OperationOutcome, check_field_path, outcome_status, shown
from migration.steps.mongo.query_filters import compile_regex

ISO_8601 = "iso8601"
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_NUMBER_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_INT64 = 2**63


class Unconvertible(ValueError):
    """A value a conversion cannot take."""


class ConvertSpec(StepParams):
    field: str = Field(description="the field to convert")
    to: Literal["date", "int", "float", "number", "string"]
    formats: list[str] = Field(default_factory=lambda: [ISO_8601], min_length=1)
    into: str | None = Field(default=None, description="write the result here (default: in place)")
    unconvertible: Literal["invalid", "error", "skip"] = "invalid"

    @field_validator("field", "into")
    @classmethod
    def _paths(cls, value: str | None) -> str | None:
        return None if value is None else check_field_path(value)

    @model_validator(mode="after")
    def _formats(self) -> ConvertSpec:
        if self.to != "date" and self.formats != [ISO_8601]:
            raise ValueError("formats are for to: date")
        for fmt in self.formats:
            if fmt != ISO_8601 and "%" not in fmt:
                raise ValueError(f"date format {fmt!r} is neither {ISO_8601!r} nor a strptime format")
        return self


class ConvertOperation(StepParams):
    """Convert a field's value to another type: ``date``, ``int``, ``float``, ``number`` or ``string``.

    ``to: date`` parses text with each of ``formats`` in turn: ``iso8601`` (the
    default: ``2024-03-01``, ``2024-03-01T10:15:00Z``, ``2024-03-01T10:15:00+02:00``)
    or a Python ``strptime`` format (``%d/%m/%Y``); an offset is converted to UTC,
    a time without one is taken as UTC. ``int`` and ``float`` take numbers and
    number text (``" 12.50 "``; ``int`` only integral values); ``number`` gives an
    int for integral text and a float otherwise (never Decimal128, which FerretDB
    1.x lacks). ``string`` writes numbers, booleans (``true``/``false``), dates
    (ISO 8601, UTC, milliseconds) and ObjectIds (hex) as text. A value already of
    the target type, null and an absent field are no change. Any other value
    (``"soon"`` for a date, ``"12abc"`` for a number, a document for a string)
    makes the whole document ``unconvertible``: ``invalid`` (default: left as it
    is, counted and logged with the value), ``error`` or ``skip``. ``into`` writes
    the result to another field and keeps the source.

    Example:
        ```yaml
        operations:
          - convert: {field: ordered_at, to: date, formats: [iso8601, "%d/%m/%Y"]}
          - convert: {field: total, to: float}
          - convert: {field: zip, to: string, into: zip_text}
        ```
    """

    convert: ConvertSpec

    def apply(self, doc: dict[str, Any]) -> None:
        spec = self.convert
        value = _readable(doc, spec.field, "convert")
        if value is MISSING:
            return
        try:
            converted = convert_value(value, spec.to, spec.formats)
        except Unconvertible as exc:
            reason = f"convert: {spec.field} value {shown(value)} {exc}"
            raise OperationOutcome(outcome_status(spec.unconvertible), reason) from None
        set_path(doc, spec.into or spec.field, converted)

    def describe(self) -> str:
        spec = self.convert
        formats = f" ({', '.join(spec.formats)})" if spec.to == "date" else ""
        return f"convert {spec.field} to {spec.to}{formats}" + (f" into {spec.into}" if spec.into else "")


def _readable(doc: dict[str, Any], path: str, kind: str) -> Any:
    value = get_path(doc, path)
    if value is UNADDRESSABLE:
        raise OperationOutcome("error", f"{kind}: {path} is inside an array")
    return value


def convert_value(value: Any, to: str, formats: list[str]) -> Any:
    """``value`` as ``to``; None stays None.

    Raises:
        Unconvertible: the value cannot be converted (the message says why).
    """
    if value is None:
        return None
    if to == "date":
        return _to_date(value, formats)
    if to == "string":
        return _to_string(value)
    return _to_number(value, to)


def _to_date(value: Any, formats: list[str]) -> datetime:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise Unconvertible(f"is a {type(value).__name__}, not date text")
    text = value.strip()
    for fmt in formats:
        try:
            parsed = datetime.fromisoformat(text) if fmt == ISO_8601 else datetime.strptime(text, fmt)
        except ValueError:
            continue
        if parsed.tzinfo is not None:
            parsed = parsed.astimezone(UTC).replace(tzinfo=None)
        return parsed
    raise Unconvertible(f"matches none of the date formats {', '.join(formats)}")


def _to_number(value: Any, to: str) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise Unconvertible(f"is a {type(value).__name__}, not a number")
    if isinstance(value, str):
        text = value.strip()
        if not _NUMBER_TEXT.match(text):
            raise Unconvertible("is not a number")
        number: int | float = int(text) if _INT_TEXT.match(text) else float(text)
    else:
        number = int(value) if isinstance(value, Int64) else value
    if isinstance(number, float) and not math.isfinite(number):
        raise Unconvertible("is not a finite number")
    if to == "float":
        return float(number)
    if isinstance(number, float):
        if not number.is_integer():
            if to == "int":
                raise Unconvertible("is not a whole number")
            return number
        if to == "number" and isinstance(value, float):
            return number  # already a number: no change
        number = int(number)
    if abs(number) >= _INT64:
        raise Unconvertible("does not fit a 64-bit integer")
    return number


def _to_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(int(value)) if isinstance(value, Int64) else str(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    if isinstance(value, ObjectId):
        return str(value)
    raise Unconvertible(f"is a {type(value).__name__}, which has no text form")


def _check_paths(value: list[str]) -> list[str]:
    for path in value:
        check_field_path(path)
    return value


_TEXT_CHANGES: dict[str, Callable[[str], str]] = {"lower": str.lower, "upper": str.upper, "trim": str.strip}


class _TextOperation(StepParams):
    """Shared by lower, upper and trim: the fields named under the operation's own key."""

    kind: ClassVar[str]

    def fields(self) -> list[str]:
        paths: list[str] = getattr(self, self.kind)
        return paths

    def apply(self, doc: dict[str, Any]) -> None:
        change = _TEXT_CHANGES[self.kind]
        for path in self.fields():
            value = _readable(doc, path, self.kind)
            if isinstance(value, str):
                set_path(doc, path, change(value))

    def describe(self) -> str:
        return f"{self.kind} {', '.join(self.fields())}"


class LowerOperation(_TextOperation):
    """Lower-case the text of fields: ``[path, ...]``; other values (numbers, null) are left alone.

    Example:
        ```yaml
        operations:
          - lower: [status, email]
        ```
    """

    kind = "lower"
    lower: list[str] = Field(min_length=1)
    _paths = field_validator("lower")(_check_paths)


class UpperOperation(_TextOperation):
    """Upper-case the text of fields: ``[path, ...]``; other values are left alone.

    Example:
        ```yaml
        operations:
          - upper: [country_code]
        ```
    """

    kind = "upper"
    upper: list[str] = Field(min_length=1)
    _paths = field_validator("upper")(_check_paths)


class TrimOperation(_TextOperation):
    """Remove leading and trailing white space from the text of fields: ``[path, ...]``.

    Example:
        ```yaml
        operations:
          - trim: [name, "address.city"]
        ```
    """

    kind = "trim"
    trim: list[str] = Field(min_length=1)
    _paths = field_validator("trim")(_check_paths)


class ReplaceSpec(StepParams):
    field: str
    regex: str
    options: str = ""
    with_: str = Field(alias="with", description="the literal text put in place of each match")

    @field_validator("field")
    @classmethod
    def _field(cls, value: str) -> str:
        return check_field_path(value)

    @model_validator(mode="after")
    def _compiles(self) -> ReplaceSpec:
        compile_regex(self.regex, self.options)
        return self


class ReplaceOperation(StepParams):
    """Replace every match of a regular expression in a field's text with literal text.

    ``regex`` (with optional ``options`` such as ``i``) is matched anywhere in the
    value; each match becomes ``with`` as written (no group references). A value
    that is not text, or an absent field, is left alone.

    Example:
        ```yaml
        operations:
          - replace: {field: phone, regex: "[^0-9+]", with: ""}
        ```
    """

    replace: ReplaceSpec

    def apply(self, doc: dict[str, Any]) -> None:
        spec = self.replace
        value = _readable(doc, spec.field, "replace")
        if isinstance(value, str):
            pattern = compile_regex(spec.regex, spec.options)
            set_path(doc, spec.field, pattern.sub(lambda _match: spec.with_, value))

    def describe(self) -> str:
        spec = self.replace
        return f"replace /{spec.regex}/{spec.options} in {spec.field} with {spec.with_!r}"


CONVERSIONS = (ConvertOperation, LowerOperation, UpperOperation, TrimOperation, ReplaceOperation)


# --- the same on the server (update pipelines) ----------------------------------------


_SERVER_TEXT = {"lower": "$toLower", "upper": "$toUpper"}


def server_expression(operation: Any) -> dict[str, Any] | str:
    """``{path: new value expression}`` doing ``operation`` in an update pipeline, or the
    reason it needs Python (its result must equal the client-side one exactly)."""
    if isinstance(operation, _TextOperation):
        new: dict[str, Any] = {}
        for path in operation.fields():
            ref = "$" + path
            operator = _SERVER_TEXT.get(operation.kind)
            changed = {operator: ref} if operator else {"$trim": {"input": ref}}
            new[path] = {"$cond": [{"$eq": [{"$type": ref}, "string"]}, changed, ref]}
        return new
    if isinstance(operation, ConvertOperation):
        return "convert parses values in Python (the servers' parsers accept other text)"
    if isinstance(operation, ReplaceOperation):
        return "replace uses a regular expression the servers' update pipelines cannot substitute"
    return f"{type(operation).__name__.removesuffix('Operation').lower()} needs Python"
