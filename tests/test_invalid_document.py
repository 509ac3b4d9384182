"""A transform function marks a document invalid by raising migration.errors.InvalidDocument."""

from __future__ import annotations

from typing import Any

from migration.errors import InvalidDocument
from migration.recipes.bank_details import InvalidValue
from migration.steps.mongo.guarded_writes import Planner


def _planner(function: Any) -> Planner:
    return Planner(function, None, lambda text: text)


def test_invalid_document_and_its_subclasses_mark_the_document_invalid() -> None:
    class NotThisOne(InvalidDocument):
        def __init__(self) -> None:  # does not call InvalidDocument.__init__
            Exception.__init__(self, "custom reason")

    for exc in (InvalidDocument("bad n"), InvalidValue("bad value"), NotThisOne()):

        def raising(doc: dict[str, Any], exc: Exception = exc) -> None:
            raise exc

        planned = _planner(raising).plan({"_id": 1, "n": 2})
        assert planned.status == "invalid", exc
        assert planned.reason == str(exc)


def test_a_class_merely_named_invalid_value_is_an_error_not_invalid() -> None:
    # Matching by class name would let any library's InvalidValue silently skip documents.
    class InvalidValue(ValueError):
        pass

    def raising(doc: dict[str, Any]) -> None:
        raise InvalidValue("looks invalid")

    planned = _planner(raising).plan({"_id": 1})
    assert planned.status == "error"
    assert planned.reason == "InvalidValue: looks invalid"
