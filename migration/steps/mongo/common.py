"""Connecting to MongoDB with errors an operator can act on."""

from __future__ import annotations

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


def server_info(client: MongoClient[Any]) -> dict[str, Any]:
    """Version and whether the server is FerretDB (which lacks some operations)."""
    info = client.server_info()
    build = client.admin.command("buildInfo")
    return {
        "version": str(info.get("version", "")),
        "ferretdb": "ferretdb" in build or "ferretdbVersion" in build,
    }


def topology(client: MongoClient[Any]) -> str:
    """``standalone``, ``replica set <name>`` or ``sharded``, from ``hello``."""
    hello = client.admin.command("hello")
    if hello.get("msg") == "isdbgrid":
        return "sharded"
    if hello.get("setName"):
        return f"replica set {hello['setName']}"
    return "standalone"


def user_collections(db: Database[Any]) -> list[str]:
    """Names of the database's plain collections (no views, no ``system.*``), sorted."""
    names = []
    for spec in db.list_collections():
        name = str(spec["name"])
        if spec.get("type", "collection") != "collection" or name.startswith("system."):
            continue
        names.append(name)
    return sorted(names)
