"""The dry run of ``mongo.validate`` shows one readable line per check, not one JSON line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import assert_no_traceback, migration, write_plan

PLAN = """
name: validate-preview
vars: {{db: "{url}"}}
phases:
  - id: validate
    steps:
      - id: validate
        uses: mongo.validate
        with:
          uri: "{{{{ vars.db }}}}"
          checks:
            - {{name: all-orders, type: count, collection: orders, min: 3, max: 10}}
            - {{name: paid-total, type: fields_present, collection: orders, fields: [total, status],
               filter: {{status: paid}}, allow_null: false}}
            - {{name: no-legacy, type: fields_absent, collection: orders, fields: [legacy_total]}}
            - {{name: customers-exist, type: references, collection: orders, field: customer_id,
               to: customers}}
            - name: by-status
              type: distribution
              collection: orders
              groups: {{paid: {{status: paid}}, open: {{status: open}}}}
              expect: {{open: 1}}
            - {{name: look, type: sample, collection: orders, size: 2, fields: [status]}}
            - {{name: ids, type: valid_ids, collection: orders, id_type: int}}
            - {{name: elsewhere, type: count, collection: invoices, equals: 0}}
"""


def test_dry_run_shows_each_check_on_a_readable_line(tmp_path: Path, mongo_url: str, mongo_db: Any) -> None:
    mongo_db.orders.insert_many([{"_id": i, "status": "paid" if i % 2 else "open"} for i in range(1, 4)])
    write_plan(tmp_path / "plan.yaml", PLAN.format(url=mongo_url))
    result = migration(tmp_path, "run", "plan.yaml", "--dry-run", "--state-dir", "state")
    assert_no_traceback(result)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "checks: see the preview below" in result.stdout
    assert not any('"type": "count"' in line for line in lines)  # no JSON dump of the checks
    expected = [
        "all-orders (count): documents in orders >= 3 and <= 10",
        'paid-total (fields_present): every document in orders where {"status": "paid"} has total, '
        "status, none of them null",
        "no-legacy (fields_absent): no document in orders has legacy_total",
        "customers-exist (references): every customer_id in orders is an _id in customers",
        'by-status (distribution): counts in orders per group: paid {"status": "paid"}; '
        'open {"status": "open"}; expect open=1',
        "look (sample): show the first 2 documents of orders (fields status); always passes",
        "ids (valid_ids): every _id in orders is non-null and of type int",
        "elsewhere (count): documents in invoices = 0 (collection does not exist now)",
    ]
    shown = [line.strip() for line in lines]
    for line in expected:
        assert line in shown, line
    assert max(len(line) for line in lines) < 200
    assert not (tmp_path / "state").exists()
