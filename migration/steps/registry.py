"""One registry of plugins: step types, keyed by name, and rollback handlers.

Step types are filled by the :func:`register` decorator (built-ins) and by the
``migration.steps`` entry point group (plugins: each entry point names a
:class:`Step` subclass). Rollback handlers (``rollback: {handler: NAME}``) come
from :func:`register_handler` or the ``migration.rollback_handlers`` group.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any, TypeVar

from migration.errors import MigrationError
from migration.steps.base import Step

_REGISTRY: dict[str, type[Step[Any]]] = {}
_LOADED = False

# Built-in step types by name, imported on first use: a plan of shell steps
# never pays for importing pymongo.
BUILTIN_MODULES = {
    "shell": "migration.steps.shell",
    "http.check": "migration.steps.http",
    "process.start": "migration.steps.process",
    "process.stop": "migration.steps.process",
    "confirm": "migration.steps.gates",
    "notify": "migration.steps.misc",
    "python": "migration.steps.misc",
    "sleep": "migration.steps.misc",
    "require": "migration.steps.misc",
    "mongo.preflight": "migration.steps.mongo.preflight",
    "mongo.backup": "migration.steps.mongo.backup",
    "mongo.restore": "migration.steps.mongo.restore",
    "mongo.transform": "migration.steps.mongo.transform",
    "mongo.validate": "migration.steps.mongo.validate",
}

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
    """Import every built-in and every plugin."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for module in sorted(set(BUILTIN_MODULES.values())):
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
    if name not in _REGISTRY and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
    if name not in _REGISTRY:
        _load()  # a plugin, or unknown
    return _REGISTRY.get(name)


def unregister(name: str) -> None:
    """Remove a step type registered under ``name`` (tests, and plugins that reload)."""
    _REGISTRY.pop(name, None)


@contextmanager
def registered(cls: S) -> Iterator[S]:
    """Register ``cls`` for the duration of a ``with`` block."""
    register(cls)
    try:
        yield cls
    finally:
        unregister(cls.name)


# -- rollback handlers --------------------------------------------------------------
# ``handler(ctx, **with)`` callables, run as ordinary steps through the adapter in
# :mod:`migration.steps.rollback_handler`.

RollbackHandler = Callable[..., Any]
HANDLER_GROUP = "migration.rollback_handlers"

_HANDLERS: dict[str, RollbackHandler] = {}


def register_handler(name: str) -> Callable[[RollbackHandler], RollbackHandler]:
    """Decorator: register a rollback handler under ``name``."""

    def decorate(fn: RollbackHandler) -> RollbackHandler:
        _HANDLERS[name] = fn
        return fn

    return decorate


def find_handler(name: str) -> RollbackHandler | None:
    """The rollback handler registered (or installed as an entry point) under ``name``."""
    if name in _HANDLERS:
        return _HANDLERS[name]
    for ep in entry_points(group=HANDLER_GROUP):
        if ep.name == name:
            handler = ep.load()
            _HANDLERS[name] = handler
            return handler
    return None
