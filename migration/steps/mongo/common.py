"""Connecting to MongoDB with errors an operator can act on."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import (
    ConfigurationError,
    InvalidURI,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from pymongo.uri_parser import parse_uri

from migration.errors import StepError
from migration.secrets import mask_url

# Re-exported: the mongo steps measure and show sizes like every other step.
from migration.steps.sizes import free_disk_bytes as free_disk_bytes
from migration.steps.sizes import human_bytes as human_bytes

CONNECT_TIMEOUT_MS = 5000


def database_name(uri: str) -> str:
    """The database named in the URI path; a URI without one is an error."""
    try:
        parsed = parse_uri(uri)
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise StepError(f"bad MongoDB URI {mask_url(uri)}: {exc}") from exc
    name = parsed.get("database")
    if not name:
        raise StepError(
            f"MongoDB URI {mask_url(uri)} names no database; add it to the path "
            "(mongodb://host:port/<database>)"
        )
    return str(name)


def connect(uri: str, timeout_ms: int = CONNECT_TIMEOUT_MS) -> tuple[MongoClient[Any], Database[Any]]:
    """Open a client and check the server answers (and accepts the credentials).

    Raises StepError with a one-line, password-free reason: bad URI, unreachable
    host (after ``timeout_ms``, not pymongo's default 30 s) or authentication.
    """
    name = database_name(uri)
    safe = mask_url(uri)
    try:
        client: MongoClient[Any] = MongoClient(
            uri,
            serverSelectionTimeoutMS=timeout_ms,
            connectTimeoutMS=timeout_ms,
            appname="migration",
        )
    except (InvalidURI, ConfigurationError, ValueError) as exc:
        raise StepError(f"bad MongoDB URI {safe}: {exc}") from exc
    try:
        client[name].command("ping")
        # ping may pass without auth on some servers; listing collections needs it.
        client[name].list_collection_names()
    except ServerSelectionTimeoutError as exc:
        client.close()
        raise StepError(
            f"cannot reach MongoDB at {safe} within {timeout_ms / 1000:g}s: "
            f"{mask_url(str(exc).split(',')[0])}"
        ) from exc
    except OperationFailure as exc:
        client.close()
        if exc.code in (18, 13):
            reason = (exc.details or {}).get("errmsg") or str(exc)
            raise StepError(f"MongoDB refused the credentials for {safe}: {mask_url(str(reason))}") from exc
        raise StepError(f"MongoDB error at {safe}: {mask_url(str(exc))}") from exc
    except PyMongoError as exc:
        client.close()
        raise StepError(f"MongoDB error at {safe}: {mask_url(str(exc))}") from exc
    return client, client[name]


# FerretDB 1.24 (PostgreSQL backend) holds one pooled PostgreSQL connection per
# statement of a write command until the command ends; its pool has 50, so a
# command of 50 or more statements never finishes and wedges the server for
# everyone. Write commands to FerretDB 1.x carry at most this many statements.
FERRETDB1_STATEMENTS_PER_COMMAND = 20


@dataclass(frozen=True)
class ServerKind:
    """Which server answers, from ``buildInfo``: the one place FerretDB is recognised.

    FerretDB 1.x says ``ferretdbVersion: "v1.24.2"``; FerretDB 2.x says
    ``ferretdb: {version: "v2.7.0"}``; MongoDB says neither.
    """

    version: str
    ferretdb_version: str | None = None

    @property
    def ferretdb(self) -> bool:
        return self.ferretdb_version is not None

    @property
    def ferretdb_major(self) -> int | None:
        if self.ferretdb_version is None:
            return None
        match = re.match(r"v?(\d+)", self.ferretdb_version)
        return int(match.group(1)) if match else None

    @property
    def ferretdb1(self) -> bool:
        """FerretDB 1.x: the server whose limits the workarounds below are for."""
        return self.ferretdb_major == 1

    @property
    def statements_per_command(self) -> int | None:
        """The cap on statements in one insert/update command, or None for no cap."""
        return FERRETDB1_STATEMENTS_PER_COMMAND if self.ferretdb1 else None

    @property
    def name(self) -> str:
        if self.ferretdb_version is not None:
            return f"FerretDB {self.ferretdb_version} ({self.version} wire)"
        return f"MongoDB {self.version}"


def kind_from_build_info(build: Mapping[str, Any]) -> ServerKind:
    """A :class:`ServerKind` from a ``buildInfo`` reply."""
    version = str(build.get("version", ""))
    if isinstance(build.get("ferretdbVersion"), str):
        return ServerKind(version, str(build["ferretdbVersion"]))
    nested = build.get("ferretdb")
    if isinstance(nested, Mapping):
        return ServerKind(version, str(nested.get("version") or "v?"))
    if nested is not None:
        return ServerKind(version, "v?")
    return ServerKind(version)


def detect_server(client: MongoClient[Any]) -> ServerKind:
    """What :class:`ServerKind` the client talks to (one ``buildInfo``)."""
    return kind_from_build_info(client.admin.command("buildInfo"))


def server_info(client: MongoClient[Any]) -> dict[str, Any]:
    """Version and whether the server is FerretDB (which lacks some operations)."""
    kind = detect_server(client)
    return {
        "version": kind.version,
        "ferretdb": kind.ferretdb,
        "ferretdb_version": kind.ferretdb_version,
        "server": kind.name,
    }


COMMAND_NOT_FOUND = 59


def hello(client: MongoClient[Any]) -> dict[str, Any]:
    """The server's ``hello`` reply; ``isMaster`` (its older name, the same fields) on a
    server without ``hello`` (MongoDB before 4.4.2, some wire-compatible servers: 59)."""
    try:
        reply: dict[str, Any] = client.admin.command("hello")
    except OperationFailure as exc:
        if exc.code != COMMAND_NOT_FOUND:
            raise
        reply = client.admin.command("isMaster")
    return reply


def topology(client: MongoClient[Any]) -> str:
    """``standalone``, ``replica set <name>`` or ``sharded``, from ``hello``."""
    reply = hello(client)
    if reply.get("msg") == "isdbgrid":
        return "sharded"
    if reply.get("setName"):
        return f"replica set {reply['setName']}"
    return "standalone"


def collection_exists(db: Database[Any], name: str) -> bool:
    """Whether ``db`` has a collection (or view) called ``name``.

    The name is checked in the answer too: a server may ignore listCollections'
    filter and list every collection (mongo-java-server does).
    """
    return name in db.list_collection_names(filter={"name": name})


def user_collections(db: Database[Any]) -> list[str]:
    """Names of the database's plain collections (no views, no ``system.*``), sorted."""
    names = []
    for spec in db.list_collections():
        name = str(spec["name"])
        if spec.get("type", "collection") != "collection" or name.startswith("system."):
            continue
        names.append(name)
    return sorted(names)
