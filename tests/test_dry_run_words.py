"""A dry run says in words where a step reads what an earlier step of the same run writes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import assert_no_traceback, cli_env, migration, write_plan

PLAN = """
name: words-demo
vars:
  db: "{{ env.WORDS_DB }}"
phases:
  - id: safety
    steps:
      - {id: backup, uses: mongo.backup, with: {uri: "{{ vars.db }}", out: backups}}
  - id: undo-check
    steps:
      - id: restore
        uses: mongo.restore
        with: {uri: "{{ vars.db }}", from: "{{ steps.backup.outputs.path }}", drop: true}
"""


@pytest.mark.mongo
def test_the_restore_preview_names_the_backup_this_run_takes(
    tmp_path: Path, mongo_url: str, mongo_db: Any
) -> None:
    write_plan(tmp_path / "plan.yaml", PLAN)
    mongo_db["things"].insert_one({"_id": 1})
    result = migration(
        tmp_path,
        "run",
        "plan.yaml",
        "--dry-run",
        "--state-dir",
        "state",
        env=cli_env({"WORDS_DB": mongo_url}),
    )
    assert_no_traceback(result.stderr)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "would restore from the path that step backup (phase safety) writes during this run" in result.stdout
    ), result.stdout
    assert "not there yet" not in result.stdout
    assert not (tmp_path / "state").exists()
