"""The connection to the state database: collections, write concern, the server's clock.

Every state change is one write with ``w: majority, j: true``. A server that
refuses that write concern (a standalone without journaling, a proxy that knows
only ``w: 1``) is detected by a probe write in :meth:`Connection.probe` and the
strongest concern it accepts is used instead, with a warning naming it. FerretDB
1.24 accepts every write concern without checking it (even ``w: 5`` on one
server); its writes are durable because each is a committed PostgreSQL (or
SQLite) transaction before it answers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pymongo
import structlog
from pymongo.collection import Collection
from pymongo.errors import (
    ConfigurationError,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)
from pymongo.write_concern import WriteConcern

from migration.errors import StateError, UsageError
from migration.secrets import mask_url

log = structlog.get_logger()

DURABLE = WriteConcern(w="majority", j=True)
# Tried in order when the server refuses the one before (see ``probe``).
FALLBACKS = (DURABLE, WriteConcern(w=1, j=True), WriteConcern(w=1))
# Codes a server answers a write concern it cannot honour with: BadValue,
# FailedToParse, UnknownReplWriteConcern, UnsatisfiableWriteConcern, and
# "journaling is not enabled" (2 on old servers; 9 or 100 elsewhere).
WRITE_CONCERN_REFUSED = frozenset({2, 9, 79, 100})
COMMAND_NOT_FOUND = 59
DEFAULT_PREFIX = "migration_"
COLLECTIONS = ("runs", "current", "journal", "events", "leases")


def describe_target(url: str) -> str:
    """A connection string without its credentials or options: ``mongodb://host:port/db``."""
    if "://" not in url:
        return url
    parts = urlsplit(url)
    hosts = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{hosts}{parts.path}"


def parse_seconds(value: str | float | None, default: float, what: str) -> float:
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"{what} must be a number of seconds, not {value!r}") from None
    if not seconds > 0:
        raise UsageError(f"{what} must be more than 0 seconds, not {value!r}")
    return seconds


class Connection:
    """The state database named by a URL, and its collections (``<prefix>runs`` ...)."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, timeout_ms: int = 10_000) -> None:
        self.url = url
        self.shown = mask_url(url)
        self.prefix = prefix
        try:
            options: dict[str, Any] = {"appname": "migration-state", "tz_aware": True}
            if "serverselectiontimeoutms" not in url.lower():
                options["serverSelectionTimeoutMS"] = timeout_ms
            self.client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(url, **options)
            self.db = self.client.get_default_database()
        except ConfigurationError as exc:
            if "database" in str(exc).lower():
                raise UsageError(
                    f"the state URL {self.shown} names no database; give one: mongodb://HOST/DB"
                ) from None
            raise UsageError(f"bad state URL {self.shown}: {exc}") from None
        except (ValueError, PyMongoError) as exc:
            raise UsageError(f"bad state URL {self.shown}: {exc}") from None
        self.write_concern = DURABLE
        self.local_clock = False  # the server does not tell its time: use ours
        self._probed = False

    def collection(self, name: str) -> Collection[dict[str, Any]]:
        return self.db.get_collection(self.prefix + name, write_concern=self.write_concern)

    @contextlib.contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """Any driver error becomes one line naming the store (never its password)."""
        try:
            yield
        except OperationFailure as exc:
            raise StateError(
                f"state store {self.shown}: {doing} failed (code {exc.code}): {_reason(exc)}"
            ) from exc
        except PyMongoError as exc:
            raise StateError(f"state store {self.shown}: {doing} failed: {_reason(exc)}") from exc

    def probe(self, host: str) -> None:
        """One write with the durable concern; fall back (and say so) if the server refuses it."""
        if self._probed:
            return
        for concern in FALLBACKS:
            self.write_concern = concern
            try:
                self._probe_write(host)
            except StateError as exc:
                code = getattr(exc.__cause__, "code", None)
                if isinstance(exc.__cause__, (OperationFailure, WriteConcernError)) and (
                    code in WRITE_CONCERN_REFUSED
                ):
                    continue
                raise
            if concern is not DURABLE:
                log.warning(
                    "the state store refuses w: majority, j: true; state writes use a weaker concern",
                    store=self.shown,
                    write_concern=concern.document,
                )
            self._probed = True
            return
        raise StateError(f"state store {self.shown} refuses every write concern tried (w: majority ... w: 1)")

    def _probe_write(self, host: str) -> None:
        """Upsert this host's probe document. Two processes of one host upserting it at
        once: one inserts, the other gets 11000 (an upsert is not atomic); it then matches."""
        for attempt in range(3):
            try:
                with self.errors("a probe write"):
                    self.collection("current").update_one(
                        {"_id": f"probe|{host}"},
                        {"$set": {"probe": True, "host": host}},
                        upsert=True,
                    )
                return
            except StateError as exc:
                if not isinstance(exc.__cause__, DuplicateKeyError) or attempt == 2:
                    raise

    def server_now(self) -> datetime:
        """The server's clock (``hello``'s localTime); the local clock if it does not say.

        A server without ``hello`` (MongoDB before 4.4.2 and some wire-compatible
        servers answer 59 CommandNotFound) is asked ``isMaster``, its older name.
        """
        if not self.local_clock:
            with self.errors("reading the server's clock"):
                try:
                    reply = self.db.command("hello")
                except OperationFailure as exc:
                    if exc.code != COMMAND_NOT_FOUND:
                        raise
                    reply = self.db.command("isMaster")
            now = reply.get("localTime")
            if isinstance(now, datetime):
                return now if now.tzinfo else now.replace(tzinfo=UTC)
            self.local_clock = True
            log.warning("the state store does not report its clock; leases use this host's clock")
        return datetime.now(UTC)

    def close(self) -> None:
        self.client.close()


def _reason(exc: PyMongoError) -> str:
    details = getattr(exc, "details", None)
    if isinstance(details, dict) and isinstance(details.get("errmsg"), str):
        return mask_url(details["errmsg"])
    return mask_url(str(exc).split(", full error:")[0])
