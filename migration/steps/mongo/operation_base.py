"""What every declarative transform operation shares: field paths and per-document outcomes."""

from __future__ import annotations

from typing import Literal


def check_field_path(path: str) -> str:
    parts = path.split(".")
    if not path or any(not p for p in parts) or any(p.startswith("$") for p in parts):
        raise ValueError(f"bad field path {path!r}")
    if parts[0] == "_id":
        raise ValueError("a transform may not change _id")
    return path


class OperationOutcome(Exception):
    """A document the operations do not transform: ``invalid``, ``error`` or ``skipped``."""

    def __init__(self, status: Literal["invalid", "error", "skipped"], reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def shown(value: object) -> str:
    """A value for a reason line, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def outcome_status(policy: str) -> Literal["invalid", "error", "skipped"]:
    """The document status of an ``invalid`` / ``error`` / ``skip`` policy."""
    return "skipped" if policy == "skip" else "error" if policy == "error" else "invalid"
