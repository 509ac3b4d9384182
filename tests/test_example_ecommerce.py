"""plans/examples/ecommerce-orders.yaml end to end through the CLI, as a new user runs it."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import PROJECT, assert_no_traceback, cli_env, migration
from pymongo.database import Database

pytestmark = pytest.mark.mongo

PLAN = PROJECT / "plans" / "examples" / "ecommerce-orders.yaml"


def run_example(mongo_url: str, tmp_path: Path, *extra: str) -> Any:
    return migration(
        PROJECT,  # the plan's seed module is imported from the repository root
        "run",
        PLAN,
        "--var",
        "seed=true",
        "--var",
        f"backup_root={tmp_path / 'backups'}",
        "--state-dir",
        tmp_path / "state",
        *extra,
        env=cli_env({"SHOP_DATABASE_URL": mongo_url}),
        timeout=300,
    )


def test_the_example_migrates_seeded_orders(mongo_url: str, mongo_db: Database[Any], tmp_path: Path) -> None:
    result = run_example(mongo_url, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_no_traceback(result)
    orders = list(mongo_db.orders.find())
    assert len(orders) == 2000
    assert all(isinstance(o["ordered_at"], datetime) for o in orders)
    assert all(o["status"] == o["status"].lower() for o in orders)
    assert all(isinstance(o["total"], float) for o in orders)
    names = {c["_id"]: c["name"] for c in mongo_db.customers.find()}
    assert all(o["customer_name"] == names[o["customer_id"]] for o in orders)

    report = migration(PROJECT, "report", PLAN, "--state-dir", tmp_path / "state", env=cli_env())
    assert report.returncode == 0 and "Transform: orders" in report.stdout


def test_unconvertible_orders_are_listed_and_the_backup_restored(
    mongo_url: str, mongo_db: Database[Any], tmp_path: Path
) -> None:
    result = run_example(mongo_url, tmp_path, "--var", "broken_orders=3")
    assert result.returncode == 3, result.stderr[-3000:]
    assert "some orders could not be converted" in result.stderr
    orders = list(mongo_db.orders.find())
    assert len(orders) == 2000 and all(isinstance(o["ordered_at"], str) for o in orders)  # restored
    assert not any("customer_name" in o for o in orders)
    (log,) = (tmp_path / "backups").glob("migration-log-*.json")
    invalid = [json.loads(line) for line in log.read_text().splitlines()]
    invalid = [r for r in invalid if r["status"] == "invalid"]
    assert [r["id"] for r in invalid] == [0, 1, 2]
    assert invalid[0]["reason"].startswith("convert: ordered_at value 'last Tuesday' matches none")
