"""The ``lookup`` operation of ``mongo.transform``: copy a field from another collection by reference.

Denormalising (``orders.customer_name`` from ``customers.name`` by
``orders.customer_id``) costs one ``$in`` query per batch: before the batch's
documents are planned, :meth:`LookupOperation.fetch` reads the referenced
documents of the whole batch at once (``$lookup`` would do it on the server,
but FerretDB 1.x lacks it). Nothing is kept between batches, so a resumed run
finds exactly what an uninterrupted one does.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator
from pymongo.database import Database

from migration.steps.base import StepParams
from migration.steps.mongo.documents import MISSING, UNADDRESSABLE, get_path, id_key, set_path
from migration.steps.mongo.operation_base import OperationOutcome, check_field_path, outcome_status, shown


class LookupSpec(StepParams):
    from_: str = Field(alias="from", min_length=1, description="the collection referenced")
    local: str = Field(description="the field of this document holding the reference")
    foreign: str = Field(default="_id", description="the field of the referenced document it names")
    field: str = Field(description="the field of the referenced document to copy")
    as_: str = Field(alias="as", description="where the copy goes in this document")
    missing: Literal["invalid", "error", "skip", "null"] = "invalid"

    @field_validator("local", "foreign", "field")
    @classmethod
    def _read_paths(cls, value: str) -> str:
        parts = value.split(".")
        if not value or any(not p for p in parts) or any(p.startswith("$") for p in parts):
            raise ValueError(f"bad field path {value!r}")
        return value

    @field_validator("as_")
    @classmethod
    def _target(cls, value: str) -> str:
        return check_field_path(value)


class LookupOperation(StepParams):
    """Copy a field from the document another collection's reference names (denormalise).

    For each document, ``local`` holds a value that ``foreign`` (default ``_id``)
    has in one document of the collection ``from``; that document's ``field`` is
    copied into ``as``. The referenced documents of a whole batch are read with
    one ``$in`` query. A document without ``local`` (or with null there) is no
    change; a reference that finds nothing is ``missing``: ``invalid`` (default:
    left as it is, counted and logged with the value), ``error``, ``skip``, or
    ``null`` (``as`` is set to null). A referenced document without ``field``
    gives null. ``local`` is read as the document was read, before the other
    operations.

    Example:
        ```yaml
        operations:
          - lookup: {from: customers, local: customer_id, foreign: _id, field: name, as: customer_name}
        ```
    """

    lookup: LookupSpec

    def fetch(self, db: Database[Any], docs: list[dict[str, Any]]) -> dict[str, Any]:
        """The values of ``field`` by referenced key, for every reference in ``docs`` (one query)."""
        spec = self.lookup
        wanted: dict[str, Any] = {}
        for doc in docs:
            value = get_path(doc, spec.local)
            if value is not MISSING and value is not UNADDRESSABLE and value is not None:
                wanted.setdefault(id_key(value), value)
        if not wanted:
            return {}
        found: dict[str, Any] = {}
        projection = {spec.foreign: 1, spec.field: 1}
        for other in db[spec.from_].find({spec.foreign: {"$in": list(wanted.values())}}, projection):
            key = get_path(other, spec.foreign)
            if key is not MISSING and key is not UNADDRESSABLE:
                copied = get_path(other, spec.field)
                found.setdefault(id_key(key), None if copied in (MISSING, UNADDRESSABLE) else copied)
        return found

    def apply(self, doc: dict[str, Any], found: dict[str, Any], before: dict[str, Any]) -> None:
        spec = self.lookup
        value = get_path(before, spec.local)
        if value is UNADDRESSABLE:
            raise OperationOutcome("error", f"lookup: {spec.local} is inside an array")
        if value is MISSING or value is None:
            return
        copied = found.get(id_key(value), MISSING)
        if copied is MISSING:
            if spec.missing == "null":
                set_path(doc, spec.as_, None)
                return
            reason = f"lookup: no {spec.from_} document has {spec.foreign} {shown(value)}"
            raise OperationOutcome(outcome_status(spec.missing), reason)
        set_path(doc, spec.as_, copied)

    def describe(self) -> str:
        spec = self.lookup
        return (
            f"lookup {spec.as_} = {spec.from_}.{spec.field} where {spec.from_}.{spec.foreign} = "
            f"{spec.local} (one $in query per batch)"
        )
