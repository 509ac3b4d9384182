"""``migration steps``: every step type with its outputs; ``migration steps NAME``: one in full."""

from __future__ import annotations

from pathlib import Path

from helpers import assert_no_traceback, migration


def test_steps_lists_each_type_with_its_declared_outputs(tmp_path: Path) -> None:
    result = migration(tmp_path, "steps")
    assert result.returncode == 0, result.stderr
    assert "mongo.validate:" in result.stdout
    assert "outputs: passed, failed, checks" in result.stdout


def test_steps_name_shows_one_type_with_its_outputs_table(tmp_path: Path) -> None:
    result = migration(tmp_path, "steps", "mongo.transform")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("## `mongo.transform`")
    assert "## `mongo.validate`" not in result.stdout
    assert "| `conflicts` |" in result.stdout  # the outputs table
    assert "#### `lookup`" in result.stdout  # its operations, documented


def test_steps_with_an_unknown_name_is_a_usage_error_with_a_suggestion(tmp_path: Path) -> None:
    result = migration(tmp_path, "steps", "mongo.valdate")
    assert result.returncode == 2
    assert_no_traceback(result.stderr)
    assert result.stderr.strip() == "error: no step type 'mongo.valdate'; did you mean 'mongo.validate'?"
