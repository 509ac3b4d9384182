"""The ``update`` command of one chunk of guarded updates, sent as it is.

``bulk_write`` of ``UpdateOne`` objects costs several microseconds a statement of
client CPU that a transform does not need (an object per statement, validation,
a command document rebuilt per statement, results merged batch by batch). A
chunk of the transform is one unordered ``update`` command, so it is sent as one:
the statements as plain documents, the collection's write concern and codec
options, the reply read as the server wrote it.

What ``bulk_write`` did besides, kept here:

- **its split by size**: a chunk whose command would exceed the server's
  document size is refused by pymongo before anything is sent
  (``DocumentTooLarge``); the caller then sends that chunk with ``bulk_write``,
  which splits it;
- **its retry**: where pymongo retries writes (``retryWrites``, a replica set or
  a sharded cluster), a command that fails with a network error or an error
  labelled ``RetryableWriteError`` is sent once more. Unlike pymongo's retry this
  one has no transaction number: a statement applied by the first attempt does
  not match its guard the second time, and the caller's re-read counts it as
  migrated (the same path a batch re-applied after a crash takes).

Write errors are the reply's ``writeErrors``. A write concern error (the
statements were applied, but not as durably as asked: a replica set that did not
acknowledge in time) fails the step through :func:`write_concern_failure`: the
batch is journaled and not recorded as done, so a re-run re-reads it and finds
what was applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymongo.collection import Collection
from pymongo.errors import ConnectionFailure, OperationFailure, PyMongoError

from migration.errors import StepError

# Topologies where pymongo retries a write once (retryable writes).
_RETRYING_TOPOLOGIES = frozenset({"ReplicaSetWithPrimary", "Sharded", "LoadBalanced"})


def retries_writes(collection: Collection[Any]) -> bool:
    """Whether pymongo would retry a write on this client (``retryWrites`` and a topology with it)."""
    client = collection.database.client
    return bool(client.options.retry_writes) and (
        client.topology_description.topology_type_name in _RETRYING_TOPOLOGIES
    )


def is_retryable(exc: PyMongoError) -> bool:
    """A failure pymongo's retryable writes retry: a network error, or one the server labels so."""
    if isinstance(exc, ConnectionFailure):
        return True
    return isinstance(exc, OperationFailure) and exc.has_error_label("RetryableWriteError")


class UpdateCommand:
    """Sends chunks of ``(filter, update)`` pairs of one collection as unordered ``update`` commands."""

    def __init__(self, collection: Collection[Any]) -> None:
        self.collection = collection
        self.database = collection.database
        self.name = collection.name
        self.codec_options = collection.codec_options
        concern = collection.write_concern
        self.write_concern = None if concern.is_server_default else concern.document
        self.retry = retries_writes(collection)

    def send(self, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
        """The server's reply (``n``, ``writeErrors``, ...) to one command of all ``pairs``.

        Raises:
            DocumentTooLarge: the command would exceed the server's size limit (nothing sent).
            OperationFailure: the server refused the whole command.
            PyMongoError: any other failure (after the one retry, where pymongo retries).
        """
        statements = [{"q": condition, "u": update} for condition, update in pairs]
        try:
            return self._run(statements)
        except PyMongoError as exc:
            if not (self.retry and is_retryable(exc)):
                raise
            return self._run(statements)

    def _run(self, statements: list[dict[str, Any]]) -> dict[str, Any]:
        # A new command document each attempt: pymongo adds $db, lsid and $clusterTime to it.
        command: dict[str, Any] = {"update": self.name, "updates": statements, "ordered": False}
        if self.write_concern is not None:
            command["writeConcern"] = self.write_concern
        reply: dict[str, Any] = self.database.command(command, codec_options=self.codec_options)
        return reply


def write_concern_failure(reply: Mapping[str, Any], asked: dict[str, Any] | None) -> StepError | None:
    """The error to fail with when ``reply`` (an ``update`` reply, or a ``BulkWriteError``'s
    details) carries a write concern error; None when it does not."""
    found = reply.get("writeConcernError") or next(iter(reply.get("writeConcernErrors") or []), None)
    if not found:
        return None
    code = found.get("code")
    message = found.get("errmsg") or "write concern failed"
    return StepError(
        f"the server applied a batch but could not confirm the write concern {asked or 'default'}: "
        f"{message}"
        + (f" (code {code})" if isinstance(code, int) else "")
        + "; the batch is journaled: a re-run re-reads it and finishes it"
    )
