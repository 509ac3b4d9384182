"""The VNP demo: seeded database and the stand-in backend, against a real server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import tracemalloc
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pymongo.database import Database

from migration.demo.dataset import (
    COLLECTIONS,
    SMALL_COUNTS,
    SeedError,
    collection_counts,
    expected_distribution,
    generate,
)
from migration.demo.seed import seed
from migration.recipes.bank_details import InvalidValue, classify, split_swift_bic_iban

pytestmark = pytest.mark.mongo

PROJECT = Path(__file__).resolve().parent.parent
REFERENCES: dict[str, list[tuple[str, str]]] = {
    "Portfolio": [("userId", "User")],
    "Property": [("portfolioId", "Portfolio")],
    "PropertyBankDetails": [("propertyId", "Property")],
    "Tenant": [("propertyId", "Property")],
    "Lease": [("propertyId", "Property"), ("tenantId", "Tenant")],
    "MaintenanceRequest": [("propertyId", "Property")],
    "AuditLog": [("userId", "User")],
}


def _distribution_in(db: Database[Any]) -> dict[str, int]:
    found: Counter[str] = Counter()
    for doc in db.PropertyBankDetails.find({}, {"swift_bic_iban": 1}):
        try:
            found[classify(doc.get("swift_bic_iban"))[0]] += 1
        except InvalidValue:
            found["invalid"] += 1
    return {"total": sum(found.values()), **{k: found[k] for k in ("iban", "swift", "empty", "invalid")}}


def _assert_references_hold(db: Database[Any]) -> None:
    """Every reference names an existing document; one read of each collection."""
    ids = {name: {d["_id"] for d in db[name].find({}, {"_id": 1})} for name in COLLECTIONS}
    for child, references in REFERENCES.items():
        fields = {field: 1 for field, _ in references} | {"entity": 1, "entityId": 1}
        for doc in db[child].find({}, fields):
            for field, parent in references:
                assert doc[field] in ids[parent], f"{child}.{field} {doc[field]} dangles"
            if child == "AuditLog":
                assert doc["entityId"] in ids[doc["entity"]], f"AuditLog {doc['_id']} dangles"
    property_ids = [d["propertyId"] for d in db.PropertyBankDetails.find({}, {"propertyId": 1})]
    assert len(property_ids) == len(set(property_ids)), "a property has two bank details"


def test_small_seed_has_the_guides_figures(mongo_url: str, mongo_db: Database[Any]) -> None:
    counts = seed(mongo_url, "small")
    assert counts == SMALL_COUNTS
    assert counts["User"] == 15 and counts["Portfolio"] == 8
    assert counts["Property"] == 45 and counts["PropertyBankDetails"] == 42
    for name in COLLECTIONS:
        assert mongo_db[name].count_documents({}) == SMALL_COUNTS[name]
    assert _distribution_in(mongo_db) == expected_distribution("small")
    _assert_references_hold(mongo_db)
    sample = mongo_db.PropertyBankDetails.find_one()
    assert sample is not None
    assert {"account_holder_name", "bank_name", "sort_code", "account_number"} <= set(sample)
    assert {"createdAt", "updatedAt", "propertyId"} <= set(sample)
    index_names = {i["name"] for i in mongo_db.PropertyBankDetails.list_indexes()}
    assert "PropertyBankDetails_propertyId_key" in index_names


def test_messy_small_dataset_has_every_kind_of_value(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small")
    values = [d.get("swift_bic_iban", "<missing>") for d in mongo_db.PropertyBankDetails.find()]
    assert "<missing>" in values and None in values and "" in values
    assert any(isinstance(v, str) and v and not v.strip() for v in values), "whitespace-only"
    assert any(isinstance(v, str) and " " in v.strip() for v in values), "spaced IBAN"
    assert any(
        isinstance(v, str) and v.strip() and v == v.lower() and v.strip()[:2].isalpha() for v in values
    )
    ibans = {v.replace(" ", "")[:2].upper() for v in values if isinstance(v, str) and len(v) > 14}
    assert len(ibans) >= 3, f"IBANs of several countries expected, got {ibans}"


def test_guide_profile_gives_15_iban_25_swift_2_empty(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small", profile="guide")
    assert _distribution_in(mongo_db) == {"total": 42, "iban": 15, "swift": 25, "empty": 2, "invalid": 0}


def test_medium_seed_scales_and_inserts_in_batches(mongo_url: str, mongo_db: Database[Any]) -> None:
    batches: list[tuple[str, int]] = []
    counts = seed(mongo_url, 1200, seed=7, batch_size=300, progress=lambda c, d, t: batches.append((c, d)))
    expected = collection_counts(1200)
    assert counts == expected
    assert expected["Property"] == 1200 and expected["User"] == 400
    assert expected["PropertyBankDetails"] == 1120
    for name in COLLECTIONS:
        assert mongo_db[name].count_documents({}) == expected[name]
    assert [d for c, d in batches if c == "Property"] == [300, 600, 900, 1200]
    assert _distribution_in(mongo_db) == expected_distribution(1200, seed=7)
    _assert_references_hold(mongo_db)
    # _id order is creation order, as with real ObjectIds.
    created = [d["createdAt"] for d in mongo_db.Property.find({}, {"createdAt": 1}).sort("_id", 1)]
    assert created == sorted(created)


def test_same_seed_same_documents_other_seed_other_documents(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, 100, seed=5)
    stored = list(mongo_db.PropertyBankDetails.find().sort("_id", 1))
    regenerated = list(generate("PropertyBankDetails", 100, seed=5))
    assert [d["_id"] for d in stored] == [d["_id"] for d in regenerated]
    assert [d.get("swift_bic_iban") for d in stored] == [d.get("swift_bic_iban") for d in regenerated]
    other = [d["_id"] for d in generate("PropertyBankDetails", 100, seed=6)]
    assert not set(other) & {d["_id"] for d in stored}


def test_seed_refuses_a_database_with_data_unless_dropping(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small")
    with pytest.raises(SeedError, match="already has documents"):
        seed(mongo_url, "small", drop=False)
    assert seed(mongo_url, "small", drop=True) == SMALL_COUNTS
    assert mongo_db.User.count_documents({}) == 15


def test_seed_cli_prints_counts_as_json(mongo_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "migration.demo.seed", "--uri", mongo_url, "--size", "small"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == SMALL_COUNTS
    expected = subprocess.run(
        [sys.executable, "-m", "migration.demo.seed", "--expected", "--size", "1000", "--seed", "3"],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=60,
    )
    assert json.loads(expected.stdout) == expected_distribution(1000, seed=3)


@pytest.mark.slow
def test_seed_memory_stays_flat_as_the_size_grows(mongo_url: str) -> None:
    seed(mongo_url, 50, batch_size=500)  # warm up: imports, connection pool
    peaks = []
    for size in (500, 3000):
        tracemalloc.start()
        seed(mongo_url, size, batch_size=500)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < peaks[0] * 1.5, f"peak memory grew with size: {peaks}"


# --- the stand-in backend ---------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@contextmanager
def _running_app(uri: str, *extra: str, env: dict[str, str] | None = None) -> Iterator[str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "migration.demo.app", "--port", str(port), *extra],
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": uri, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, f"app exited: {process.communicate()[1]}"
            try:
                if _get(base + "/")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "app did not answer within 20 s"
            time.sleep(0.1)
        yield base
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
        assert process.returncode == 0, f"app did not stop cleanly: {stderr}"
        assert "SIGTERM received, shutting down" in stderr


def _migrate(db: Database[Any]) -> dict[str, int]:
    """The recipe applied by hand, as mongo.transform would."""
    outcome: Counter[str] = Counter()
    for doc in db.PropertyBankDetails.find():
        try:
            update = split_swift_bic_iban(doc)
        except InvalidValue:
            outcome["invalid"] += 1
            continue
        if update is None:
            outcome["skipped"] += 1
            continue
        db.PropertyBankDetails.update_one({"_id": doc["_id"]}, update)
        outcome["migrated"] += 1
    return dict(outcome)


def test_app_serves_bank_details_only_after_the_migration(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small", profile="guide")
    first = mongo_db.PropertyBankDetails.find_one(sort=[("_id", 1)])
    assert first is not None
    with _running_app(mongo_url) as base:
        assert _get(base + "/") == (200, {"status": "ok", "database": "up"})
        status, body = _get(f"{base}/property-bank-details/{first['_id']}")
        assert status == 500
        assert "old schema" in body["message"] and "swift_bic_iban" in body["message"]
        assert _get(f"{base}/property-bank-details?limit=5")[0] == 500

        assert _migrate(mongo_db) == {"migrated": 42}

        status, body = _get(f"{base}/property-bank-details/{first['_id']}")
        assert status == 200, body
        kind, normalised = classify(first.get("swift_bic_iban"))
        assert body["id"] == str(first["_id"])
        assert body["propertyId"] == str(first["propertyId"])
        assert body["iban_number"] == (normalised if kind == "iban" else None)
        assert body["swift_bic_number"] == (normalised if kind == "swift" else None)
        assert "swift_bic_iban" not in body
        status, listed = _get(f"{base}/property-bank-details?limit=100")
        assert status == 200 and len(listed) == 42
        assert sum(1 for d in listed if d["iban_number"]) == 15
        assert sum(1 for d in listed if d["swift_bic_number"]) == 25
        assert _get(f"{base}/property-bank-details/65a1b2c3d4e5f60718293a4b")[0] == 404
        assert _get(f"{base}/property-bank-details/not-an-id")[0] == 400
        assert _get(f"{base}/property-bank-details?limit=0")[0] == 400
        assert _get(f"{base}/nothing-here")[0] == 404


def test_app_rejects_unmigrated_and_half_migrated_documents(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small")
    outcome = _migrate(mongo_db)
    assert outcome == {"migrated": 39, "invalid": 3}
    invalid = mongo_db.PropertyBankDetails.find_one({"swift_bic_iban": {"$exists": True}})
    assert invalid is not None
    half = mongo_db.PropertyBankDetails.find_one({"swift_bic_iban": {"$exists": False}})
    assert half is not None
    mongo_db.PropertyBankDetails.update_one({"_id": half["_id"]}, {"$unset": {"swift_bic_number": ""}})
    with _running_app(mongo_url) as base:
        status, body = _get(f"{base}/property-bank-details/{invalid['_id']}")
        assert status == 500 and "old schema" in body["message"]
        status, body = _get(f"{base}/property-bank-details/{half['_id']}")
        assert status == 500 and "lacks swift_bic_number" in body["message"]


def test_app_old_schema_mode_reads_the_data_before_migration(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small", profile="guide")
    first = mongo_db.PropertyBankDetails.find_one(sort=[("_id", 1)])
    assert first is not None
    with _running_app(mongo_url, "--schema", "old") as base:
        status, body = _get(f"{base}/property-bank-details/{first['_id']}")
        assert status == 200 and body["swift_bic_iban"] == first.get("swift_bic_iban")
        _migrate(mongo_db)
        assert _get(f"{base}/property-bank-details/{first['_id']}")[0] == 500


def test_app_requires_the_bearer_token_when_one_is_set(mongo_url: str, mongo_db: Database[Any]) -> None:
    seed(mongo_url, "small", profile="guide")
    _migrate(mongo_db)
    with _running_app(mongo_url, env={"API_TOKEN": "s3cret-token"}) as base:
        assert _get(base + "/")[0] == 200
        assert _get(f"{base}/property-bank-details?limit=1")[0] == 401
        assert _get(f"{base}/property-bank-details?limit=1", token="wrong")[0] == 401
        assert _get(f"{base}/property-bank-details?limit=1", token="s3cret-token")[0] == 200


def test_app_exits_non_zero_when_the_database_is_unreachable() -> None:
    dead = f"mongodb://127.0.0.1:{_free_port()}/vnp"
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "migration.demo.app", "--port", str(_free_port()), "--connect-timeout", "1"],
        cwd=PROJECT,
        env={**os.environ, "DATABASE_URL": dead},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert "cannot reach MongoDB" in result.stderr
    assert time.monotonic() - started < 15


def test_app_without_database_url_is_a_usage_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    result = subprocess.run(
        [sys.executable, "-m", "migration.demo.app", "--port", str(_free_port())],
        cwd=PROJECT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "DATABASE_URL" in result.stderr
