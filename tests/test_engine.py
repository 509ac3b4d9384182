"""The engine's parts: the typed run document, the step lifecycle, rollback as data,
handlers as steps, and what step types say about themselves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from migration import cli, report
from migration.errors import StateError
from migration.machine import step_lifecycle
from migration.plan.loader import load_plan
from migration.rollback import register_handler, rollback_entries, rollback_steps
from migration.state import RunDoc, StateStore, Status, shape_problem
from migration.steps import registry
from migration.steps.base import Step, StepContext, StepParams
from migration.steps.rollback_handler import HANDLER_USES


def _state(steps: list[dict[str, Any]], phase_status: str = "succeeded") -> RunDoc:
    document: Any = {
        "schema_version": 1,
        "run_id": "r1",
        "plan_name": "p",
        "plan_path": "p.yaml",
        "plan_digest": "d",
        "status": "succeeded",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": "2026-01-01T00:01:00.000Z",
        "error": None,
        "phases": [
            {
                "id": "a",
                "status": phase_status,
                "checkpoint": {"status": "none", "results": []},
                "steps": steps,
            }
        ],
        "rollback": {"status": None, "steps": []},
    }
    return document  # type: ignore[no-any-return]


def test_a_document_built_with_the_status_enum_is_byte_identical_to_plain_strings() -> None:
    with_enum = {"status": Status.ROLLED_BACK, "steps": [{"status": Status.SKIPPED}]}
    plain = {"status": "rolled_back", "steps": [{"status": "skipped"}]}
    assert json.dumps(with_enum, separators=(",", ":")) == json.dumps(plain, separators=(",", ":"))
    assert Status.ROLLED_BACK == "rolled_back"


def test_the_shape_check_takes_its_required_keys_from_the_document_types() -> None:
    assert (
        shape_problem({"run_id": "x"})
        == "missing status, phases, plan_digest, plan_name, started_at, rollback"
    )
    step = {"id": "s", "status": "pending", "attempts": 0}
    assert shape_problem(_state([step])) == "phases[0].steps[0] has no uses"


def test_step_lifecycle_allows_the_runner_moves_and_refuses_others() -> None:
    machine = step_lifecycle("s", Status.PENDING)
    assert machine.fire_from(Status.PENDING, "start", "step s") == "running"
    assert machine.fire_from("running", "retry", "step s") == "pending"
    assert machine.fire_from("interrupted", "start", "step s") == "running"
    assert machine.fire_from("running", "succeed", "step s") == "succeeded"
    with pytest.raises(StateError, match="step s: cannot start from state succeeded"):
        machine.fire_from("succeeded", "start", "step s")
    with pytest.raises(StateError, match="unknown status 'done' of step t"):
        step_lifecycle("t", "done")


def test_report_sections_come_from_the_step_types_grouped_by_type() -> None:
    state = _state(
        [
            {
                "id": "check",
                "uses": "mongo.validate",
                "status": "succeeded",
                "attempts": 1,
                "outputs": {
                    "passed": 1,
                    "failed": 0,
                    "checks": [{"name": "n", "type": "count", "passed": True}],
                },
            },
            {
                "id": "move",
                "uses": "mongo.transform",
                "status": "succeeded",
                "attempts": 1,
                "outputs": {
                    "total": 3,
                    "migrated": 2,
                    "skipped": 1,
                    "invalid": 0,
                    "errors": 0,
                    "conflicts": 0,
                },
            },
            {
                "id": "gone",
                "uses": "uninstalled.plugin",
                "status": "succeeded",
                "attempts": 1,
                "outputs": {"x": 1},
            },
        ]
    )
    text = report.markdown(state)
    transform = text.index(
        "## Transform: move\n\n| total | migrated | skipped | invalid | errors | conflicts |"
    )
    assert "| 3 | 2 | 1 | 0 | 0 | 0 |" in text
    assert transform < text.index("## Validation: check (1 passed, 0 failed)\n\n- [pass] **n** (count)")
    assert Step.report_sections("x", {"a": 1}) == []


def test_undo_verbs_are_declared_by_the_step_types() -> None:
    verbs = {name: cls.undo_verb for name, cls in registry.step_types().items()}
    assert (verbs["mongo.restore"], verbs["process.stop"], verbs["shell"], verbs["sleep"]) == (
        "restore",
        "stop",
        "run",
        "do",
    )


def _plan(tmp_path: Path, rollback: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: rb\n"
        f"{rollback}\n"
        "phases:\n"
        "  - id: one\n"
        "    steps: [{id: a, uses: shell, with: {command: [echo, a]}}]\n"
        "    rollback: [{id: undo-one, uses: shell, with: {command: [echo, undo]}}]\n"
        "  - id: two\n"
        "    steps: [{id: b, uses: shell, with: {command: [sh, -c, 'exit 3']}}]\n"
        "    rollback: [{id: undo-two, uses: shell, with: {command: [echo, undo]}}]\n"
        "  - id: three\n"
        "    steps: [{id: c, uses: shell, with: {command: [echo, c]}}]\n"
        "    rollback: [{id: undo-three, uses: shell, with: {command: [echo, undo]}}]\n"
    )
    return path


@register_handler("test-engine-record")
def _record(ctx: Any, target: str, token: str) -> dict[str, Any]:
    (ctx.workdir / target).write_text(
        json.dumps(
            {"error": ctx.error, "stop_set": ctx.stop_flag.is_set(), "env_has_path": "PATH" in ctx.env}
        )
    )
    ctx.check_stop()
    return {"token": token, "masked": ctx.redact.text(token)}


def test_rollback_entries_are_a_pure_function_of_plan_and_run(tmp_path: Path) -> None:
    loaded = load_plan(
        str(_plan(tmp_path, "rollback: {handler: test-engine-record, with: {target: t, token: x}}"))
    )
    state: Any = {
        "phases": [
            {"id": "one", "status": "succeeded", "steps": [{"id": "a", "attempts": 1}]},
            {"id": "two", "status": "failed", "steps": [{"id": "b", "attempts": 1}]},
            {"id": "three", "status": "pending", "steps": [{"id": "c", "attempts": 0}]},
        ]
    }

    docs = rollback_steps(loaded.plan, state)

    assert [(d["id"], d["uses"], d["phase"]) for d in docs] == [
        ("undo-two", "shell", "two"),
        ("undo-one", "shell", "one"),
        ("handler:test-engine-record", HANDLER_USES, None),
    ]
    entries = rollback_entries(loaded.plan, docs)
    assert [(e.undo, e.handler) for e in entries] == [
        (True, None),
        (True, None),
        (True, "test-engine-record"),
    ]
    assert entries[2].spec is not None and entries[2].spec.with_ == {"target": "t", "token": "x"}


def test_a_rollback_handler_runs_as_a_step_with_env_redaction_and_stop_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TEST_ENGINE_TOKEN", "tok-3f9a1c")
    _plan(
        tmp_path,
        "rollback: {handler: test-engine-record,"
        " with: {target: out.json, token: '{{ env.TEST_ENGINE_TOKEN }}'}}",
    )
    state_dir = tmp_path / "state"

    result = CliRunner().invoke(cli.main, ["run", "plan.yaml", "--state-dir", str(state_dir)])

    assert result.exit_code == 3, result.output
    seen = json.loads((tmp_path / "out.json").read_text())
    assert seen == {"error": seen["error"], "stop_set": False, "env_has_path": True}
    assert "step b failed" in seen["error"]
    store = StateStore(state_dir, "rb")
    state = store.load(store.current_run_id() or "")
    handler = state["rollback"]["steps"][-1]
    assert (handler["id"], handler["uses"], handler["status"]) == (
        "handler:test-engine-record",
        "handler",
        "succeeded",
    )
    assert handler["outputs"] == {"token": "***", "masked": "***"}
    assert "tok-3f9a1c" not in (state_dir / "rb" / f"{state['run_id']}.json").read_text()


def test_step_types_register_for_a_block_through_the_public_registry() -> None:
    class Probe(Step[StepParams]):
        """A probe."""

        name = "test.engine-probe"
        Params = StepParams

        def run(self, ctx: StepContext[StepParams]) -> dict[str, Any]:
            return {}

    with registry.registered(Probe):
        assert registry.get_step_type("test.engine-probe") is Probe
    assert "test.engine-probe" not in registry.step_types()
