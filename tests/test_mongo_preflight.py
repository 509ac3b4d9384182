"""mongo.preflight against the real test server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from migration.errors import StepError
from migration.steps.base import StepContext
from migration.steps.mongo.common import free_disk_bytes, human_bytes
from migration.steps.mongo.preflight import MongoPreflight

pytestmark = pytest.mark.mongo


def preflight_ctx(tmp_path: Path, **params: Any) -> StepContext[MongoPreflight.Params]:
    return StepContext(step_id="preflight", params=MongoPreflight.Params(**params), workdir=tmp_path)


@pytest.fixture
def seeded_url(mongo_url: str, mongo_db: Any) -> str:
    mongo_db.User.insert_many([{"_id": i, "name": f"user {i}"} for i in range(15)])
    mongo_db.PropertyBankDetails.insert_many(
        [{"_id": i, "swift_bic_iban": "DEUTDEFF DE89370400440532013000"} for i in range(42)]
    )
    mongo_db.create_collection("Empty")
    return mongo_url


def test_preflight_reports_version_topology_collections_and_free_disk(
    seeded_url: str, tmp_path: Path
) -> None:
    outputs = MongoPreflight().run(preflight_ctx(tmp_path, uri=seeded_url, backup_path="backups"))

    assert outputs["version"]
    assert outputs["topology"] == "standalone"
    assert outputs["collections"]["User"]["count"] == 15
    assert outputs["collections"]["PropertyBankDetails"]["count"] == 42
    assert outputs["collections"]["Empty"] == {"count": 0, "bytes": 0}
    assert outputs["data_bytes"] == sum(c["bytes"] for c in outputs["collections"].values())
    assert outputs["data_bytes"] > 0
    assert outputs["free_bytes"] == pytest.approx(free_disk_bytes(tmp_path)[1], rel=0.01)
    assert not (tmp_path / "backups").exists(), "preflight must create nothing"


def test_preflight_without_backup_path_measures_no_disk(seeded_url: str, tmp_path: Path) -> None:
    outputs = MongoPreflight().run(preflight_ctx(tmp_path, uri=seeded_url))
    assert outputs["free_bytes"] is None
    assert outputs["data_bytes"] > 0


def test_preflight_measures_the_nearest_existing_parent(seeded_url: str, tmp_path: Path) -> None:
    deep = "not/yet/created/backups"
    outputs = MongoPreflight().run(preflight_ctx(tmp_path, uri=seeded_url, backup_path=deep))
    assert outputs["measured_at"] == str(tmp_path)
    assert not (tmp_path / "not").exists()


def test_preflight_fails_naming_the_figure_that_fell_short(seeded_url: str, tmp_path: Path) -> None:
    free = free_disk_bytes(tmp_path)[1]
    ctx = preflight_ctx(tmp_path, uri=seeded_url, backup_path="backups", disk_factor=1e12)

    with pytest.raises(StepError) as failure:
        MongoPreflight().run(ctx)

    message = str(failure.value)
    assert message.startswith("free disk at backups: ")
    assert f" < {1e12:g} × data " in message  # noqa: RUF001
    assert human_bytes(free)[:3] in message
    assert isinstance(failure.value.outputs["free_bytes"], int)


def test_preflight_dry_run_reports_the_shortfall_as_a_warning(seeded_url: str, tmp_path: Path) -> None:
    ctx = preflight_ctx(tmp_path, uri=seeded_url, backup_path="backups", disk_factor=1e12)
    text = MongoPreflight().preview(ctx)
    assert "PropertyBankDetails: 42 documents" in text
    assert "WARNING: free disk at backups:" in text
    healthy = MongoPreflight().preview(preflight_ctx(tmp_path, uri=seeded_url, backup_path="b"))
    assert "WARNING" not in healthy


def test_preflight_bad_uri_is_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(StepError, match="bad MongoDB URI") as failure:
        MongoPreflight().run(preflight_ctx(tmp_path, uri="mongodb://host:notaport/db"))
    assert "\n" not in str(failure.value)


def test_preflight_uri_without_database_is_refused(mongo_server: Any, tmp_path: Path) -> None:
    with pytest.raises(StepError, match="names no database"):
        MongoPreflight().run(preflight_ctx(tmp_path, uri=mongo_server.url))


def test_preflight_unreachable_host_fails_within_seconds_without_leaking_password(
    tmp_path: Path,
) -> None:
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    uri = f"mongodb://admin:s3cret-pw@127.0.0.1:{port}/vnp"
    started = time.monotonic()
    with pytest.raises(StepError) as failure:
        MongoPreflight().run(preflight_ctx(tmp_path, uri=uri))
    elapsed = time.monotonic() - started

    message = str(failure.value)
    assert message.startswith("cannot reach MongoDB at mongodb://admin:***@127.0.0.1")
    assert "s3cret-pw" not in message
    assert "\n" not in message
    assert elapsed < 10
