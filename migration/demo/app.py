"""A tiny stand-in for the VNP Dashboard backend, for the migration's smoke test.

    python -m migration.demo.app --uri mongodb://127.0.0.1:27017/vnp --port 3000
    DATABASE_URL=... PORT=3000 python -m migration.demo.app

Endpoints (JSON; errors in NestJS's shape ``{"statusCode", "message", "error"}``):

- ``GET /``: health, 200 ``{"status": "ok"}`` only when the database answers, else 503.
- ``GET /property-bank-details/<id>``: one document's fields; 404 if there is none.
- ``GET /property-bank-details?limit=N``: the first N documents (default 20).

The app is the *new* code: a document still holding ``swift_bic_iban``, or lacking
``iban_number``/``swift_bic_number``, is an HTTP 500, so a smoke test against it
really checks the migration (``--schema old`` is the code before the migration,
for checking a rollback). When ``API_TOKEN`` (or ``--token``) is set, the
bank-details endpoints need ``Authorization: Bearer <token>``.

It exits with status 1 if the database does not answer within ``--connect-timeout``
seconds at start, and shuts down cleanly on SIGTERM or SIGINT. Logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bson import ObjectId
from bson.errors import InvalidId
from pymongo.database import Database
from pymongo.errors import PyMongoError

from migration.errors import MigrationError
from migration.secrets import mask_url

log = logging.getLogger("vnp-backend")

COLLECTION = "PropertyBankDetails"
OLD_FIELD = "swift_bic_iban"
NEW_FIELDS = ("iban_number", "swift_bic_number")
COMMON_FIELDS = ("account_holder_name", "bank_name", "sort_code", "account_number")
DEFAULT_LIMIT = 20
MAX_LIMIT = 1000


class SchemaMismatch(Exception):
    """A document is not in the schema this version of the code reads."""


def _json_value(value: Any) -> Any:
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def bank_details_view(doc: dict[str, Any], schema: str = "new") -> dict[str, Any]:
    """What the API returns for one PropertyBankDetails document.

    Raises:
        SchemaMismatch: the document is not in ``schema`` (new: ``iban_number`` and
            ``swift_bic_number``, no ``swift_bic_iban``; old: not yet migrated).
    """
    ident = str(doc.get("_id"))
    if schema == "new":
        if OLD_FIELD in doc:
            raise SchemaMismatch(
                f"{COLLECTION} {ident} is in the old schema: it still has {OLD_FIELD}, "
                f"and this version reads {' and '.join(NEW_FIELDS)} (run the migration)"
            )
        missing = [name for name in NEW_FIELDS if name not in doc]
        if missing:
            raise SchemaMismatch(
                f"{COLLECTION} {ident} lacks {' and '.join(missing)}, which this version needs"
            )
        fields: tuple[str, ...] = (*COMMON_FIELDS, *NEW_FIELDS)
    else:
        if OLD_FIELD not in doc and any(name in doc for name in NEW_FIELDS):
            raise SchemaMismatch(
                f"{COLLECTION} {ident} is in the new schema ({' and '.join(NEW_FIELDS)}); "
                f"this version reads {OLD_FIELD} (restore the backup)"
            )
        fields = (*COMMON_FIELDS, OLD_FIELD)
    view: dict[str, Any] = {"id": ident, "propertyId": _json_value(doc.get("propertyId"))}
    for name in (*fields, "createdAt", "updatedAt"):
        view[name] = _json_value(doc.get(name))
    return view


class AppServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], db: Database[Any], token: str | None, schema: str) -> None:
        super().__init__(address, Handler)
        self.db = db
        self.token = token
        self.schema = schema


class Handler(BaseHTTPRequestHandler):
    server: AppServer
    server_version = "vnp-dashboard-backend"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        started = time.monotonic()
        status = HTTPStatus.INTERNAL_SERVER_ERROR
        try:
            status, body = self._route()
        except SchemaMismatch as exc:
            log.error("schema error: %s", exc)
            body = _error(status, str(exc))
        except PyMongoError as exc:
            status = HTTPStatus.SERVICE_UNAVAILABLE
            log.error("database error on %s: %s", self.path, mask_url(str(exc)))
            body = _error(status, f"database error: {mask_url(str(exc)).splitlines()[0]}")
        except Exception as exc:
            log.exception("unexpected error on %s", self.path)
            body = _error(status, f"internal error: {type(exc).__name__}")
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        log.info("%s %s %d %.1fms", self.command, self.path, status, (time.monotonic() - started) * 1000)

    def _route(self) -> tuple[HTTPStatus, Any]:
        url = urlsplit(self.path)
        path = url.path.rstrip("/") or "/"
        if path == "/":
            return self._health()
        parts = path.strip("/").split("/")
        if parts[0] != "property-bank-details" or len(parts) > 2:
            return HTTPStatus.NOT_FOUND, _error(HTTPStatus.NOT_FOUND, f"Cannot GET {url.path}")
        if self.server.token and self.headers.get("Authorization") != f"Bearer {self.server.token}":
            return HTTPStatus.UNAUTHORIZED, _error(HTTPStatus.UNAUTHORIZED, "Unauthorized")
        if len(parts) == 2:
            return self._one(parts[1])
        return self._list(parse_qs(url.query).get("limit", [str(DEFAULT_LIMIT)])[-1])

    def _health(self) -> tuple[HTTPStatus, Any]:
        try:
            self.server.db.command("ping")
        except PyMongoError as exc:
            log.error("health: database does not answer: %s", mask_url(str(exc)))
            return HTTPStatus.SERVICE_UNAVAILABLE, {
                "status": "error",
                "database": "down",
                "message": mask_url(str(exc)).splitlines()[0],
            }
        return HTTPStatus.OK, {"status": "ok", "database": "up"}

    def _one(self, ident: str) -> tuple[HTTPStatus, Any]:
        try:
            key = ObjectId(ident)
        except (InvalidId, TypeError):
            return HTTPStatus.BAD_REQUEST, _error(
                HTTPStatus.BAD_REQUEST, f"{ident!r} is not a valid id (24 hex characters)"
            )
        doc = self.server.db[COLLECTION].find_one({"_id": key})
        if doc is None:
            return HTTPStatus.NOT_FOUND, _error(HTTPStatus.NOT_FOUND, f"{COLLECTION} {ident} not found")
        return HTTPStatus.OK, bank_details_view(doc, self.server.schema)

    def _list(self, limit_text: str) -> tuple[HTTPStatus, Any]:
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIMIT:
            return HTTPStatus.BAD_REQUEST, _error(
                HTTPStatus.BAD_REQUEST, f"limit must be a number from 1 to {MAX_LIMIT}"
            )
        cursor = self.server.db[COLLECTION].find().sort("_id", 1).limit(int(limit_text))
        return HTTPStatus.OK, [bank_details_view(doc, self.server.schema) for doc in cursor]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http: " + format, *args)


def _error(status: HTTPStatus, message: str) -> dict[str, Any]:
    return {"statusCode": int(status), "message": message, "error": status.phrase}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m migration.demo.app",
        description="A stand-in VNP Dashboard backend that reads PropertyBankDetails.",
    )
    parser.add_argument(
        "--uri",
        default=os.environ.get("DATABASE_URL"),
        help="MongoDB URI naming the database (default: $DATABASE_URL)",
    )
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    parser.add_argument(
        "--port", type=int, default=int(os.environ.get("PORT") or 3000), help="default: $PORT or 3000"
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("API_TOKEN"),
        help="require 'Authorization: Bearer TOKEN' (default: $API_TOKEN)",
    )
    parser.add_argument(
        "--schema",
        choices=("new", "old"),
        default="new",
        help="which PropertyBankDetails schema this code reads (default new)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=5.0,
        help="seconds to wait for the database at start (default 5)",
    )
    args = parser.parse_args(argv)  # fmt: skip
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.uri:
        log.error("no database: set DATABASE_URL or pass --uri")
        return 2
    from migration.steps.mongo.common import connect

    try:
        client, db = connect(args.uri, timeout_ms=int(args.connect_timeout * 1000))
    except MigrationError as exc:
        log.error("cannot start: %s", exc)
        return 1
    try:
        server = AppServer((args.host, args.port), db, args.token, args.schema)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        client.close()
        return 1

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("%s received, shutting down", signal.Signals(signum).name)
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log.info(
        "server started: listening on http://%s:%d (database %s at %s, %s schema)",
        host, port, db.name, mask_url(args.uri), args.schema,
    )  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        client.close()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
