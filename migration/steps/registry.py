"""One registry of step types, keyed by name.

Filled by the :func:`register` decorator (built-ins) and by the ``migration.steps``
entry point group (plugins: each entry point names a :class:`Step` subclass).
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, TypeVar

from migration.errors import MigrationError
from migration.steps.base import Step

_REGISTRY: dict[str, type[Step[Any]]] = {}
_LOADED = False

BUILTIN_MODULES = (
    "migration.steps.shell",
    "migration.steps.http",
    "migration.steps.process",
    "migration.steps.gates",
    "migration.steps.misc",
    "migration.steps.mongo.preflight",
    "migration.steps.mongo.backup",
    "migration.steps.mongo.restore",
    "migration.steps.mongo.transform",
    "migration.steps.mongo.validate",
)

S = TypeVar("S", bound=type[Step[Any]])


def register(cls: S) -> S:
    """Class decorator: add a step type under ``cls.name``; a duplicate name raises."""
    name = getattr(cls, "name", None)
    if not name:
        raise TypeError(f"step type {cls.__qualname__} has no name")
    existing = _REGISTRY.get(name)
    if existing is not None and existing is not cls:
        raise MigrationError(
            f"step type {name!r} registered twice ({existing.__module__} and {cls.__module__})"
        )
    _REGISTRY[name] = cls
    return cls


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    for ep in entry_points(group="migration.steps"):
        try:
            cls = ep.load()
        except Exception as exc:
            raise MigrationError(f"step plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from exc
        if not (isinstance(cls, type) and issubclass(cls, Step)):
            raise MigrationError(f"step plugin {ep.name!r} ({ep.value}) is not a Step subclass")
        if not getattr(cls, "name", None):
            cls.name = ep.name
        register(cls)


def step_types() -> dict[str, type[Step[Any]]]:
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_step_type(name: str) -> type[Step[Any]] | None:
    _load()
    return _REGISTRY.get(name)
