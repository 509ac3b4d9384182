"""The connection of the MongoDB store: write concern, the server's clock, target names."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.write_concern import WriteConcern
from structlog.testing import capture_logs

from migration.store_mongo import connection
from migration.store_mongo.connection import DURABLE, Connection, describe_target

pytestmark = pytest.mark.mongo


def test_state_writes_use_majority_and_journal_when_the_server_accepts_them(mongo_url: str) -> None:
    conn = Connection(mongo_url)
    conn.probe("host-a")
    assert conn.write_concern is DURABLE
    assert conn.collection("runs").write_concern.document == {"w": "majority", "j": True}
    conn.close()


def test_a_refused_write_concern_falls_back_to_the_next_and_says_so(
    mongo_url: str, server_caps: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if reason := server_caps.limit("write_concern_refused"):
        pytest.xfail(reason)  # FerretDB 1.24 accepts every write concern, even w: 5 on one server
    unsatisfiable = WriteConcern(w=50)
    monkeypatch.setattr(connection, "FALLBACKS", (unsatisfiable, DURABLE))
    monkeypatch.setattr(connection, "DURABLE", unsatisfiable)  # so the fallback counts as weaker
    conn = Connection(mongo_url)
    with capture_logs() as logs:
        conn.probe("host-a")
    assert conn.write_concern is DURABLE
    assert any("refuses w: majority" in entry["event"] for entry in logs)
    conn.close()


def test_the_lease_clock_is_the_servers(mongo_url: str) -> None:
    conn = Connection(mongo_url)
    server = conn.server_now()
    assert not conn.local_clock  # hello reports localTime (FerretDB 1.24 and MongoDB)
    assert server.tzinfo is not None
    assert abs(server - datetime.now(UTC)) < timedelta(seconds=5)  # same machine here
    conn.close()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mongodb://app:pw@db1:27017,db2:27017/vnp?authSource=admin", "mongodb://db1:27017,db2:27017/vnp"),
        ("mongodb+srv://u:p@cluster0.example.net/prod", "mongodb+srv://cluster0.example.net/prod"),
        ("mongodb://localhost/app", "mongodb://localhost/app"),
        ("staging", "staging"),
    ],
)
def test_a_target_is_recorded_without_credentials(url: str, shown: str) -> None:
    assert describe_target(url) == shown
