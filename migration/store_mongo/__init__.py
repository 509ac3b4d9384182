"""Run state, lease and history kept in MongoDB, so a team can run and resume from any host.

:class:`MongoStateStore` offers the operations of the file store
(:class:`migration.state.StateStore`); both satisfy :class:`StateBackend`.
"""

from typing import TYPE_CHECKING

from migration.state.host import host_name
from migration.store_mongo.backend import EventSink, LockView, RunDocument, StateBackend, StepDocument
from migration.store_mongo.connection import Connection, describe_target
from migration.store_mongo.errors import LeaseLost
from migration.store_mongo.events import MongoEventLog, read_events
from migration.store_mongo.history import format_history, history, last_success, open_history
from migration.store_mongo.lease import Lease
from migration.store_mongo.store import DEFAULT_LEASE_SECONDS, MongoStateStore

__all__ = [
    "DEFAULT_LEASE_SECONDS",
    "Connection",
    "EventSink",
    "Lease",
    "LeaseLost",
    "LockView",
    "MongoEventLog",
    "MongoStateStore",
    "RunDocument",
    "StateBackend",
    "StepDocument",
    "describe_target",
    "format_history",
    "history",
    "host_name",
    "last_success",
    "open_history",
    "read_events",
]

if TYPE_CHECKING:  # mypy proves that both stores satisfy the protocol
    from pathlib import Path

    from migration.state import StateStore

    def _both_are_backends(directory: Path, url: str) -> list[StateBackend]:
        return [StateStore(directory, "plan"), MongoStateStore(url, "plan")]
