"""Step plugins through the ``migration.steps`` entry point group, driven through the CLI.

The example plugin (tests/plugins/example_plugin, documented in docs/plugins.md)
is installed into a temporary site directory the way pip lays out a wheel: its
package next to a ``.dist-info`` whose ``entry_points.txt`` comes from the
plugin's own pyproject.toml. A plan then uses it like a built-in.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tomllib
from pathlib import Path

import pytest
from helpers import PROJECT, assert_no_traceback, cli_env, load_state, migration, step_states, write_plan

EXAMPLE = PROJECT / "tests" / "plugins" / "example_plugin"


def install_distribution(
    site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]
) -> None:
    """Write the metadata pip would: enough for importlib.metadata to find the entry points."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = []
    for group, points in entry_points.items():
        lines.append(f"[{group}]")
        lines.extend(f"{ep_name} = {value}" for ep_name, value in points.items())
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")


def install_example(site: Path) -> None:
    project = tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["project"]
    for package in tomllib.loads((EXAMPLE / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]:
        shutil.copytree(EXAMPLE / package, site / package)
    install_distribution(site, project["name"], project["version"], project["entry-points"])


def fake_kubectl(tmp_path: Path) -> Path:
    """A kubectl that records its arguments and answers like the real one."""
    path = tmp_path / "kubectl"
    path.write_text(
        '#!/bin/sh\necho "$@" >> "$(dirname "$0")/kubectl.calls"\n'
        'if [ "$2" = deployment/missing ]; then\n'
        "  echo 'Error from server (NotFound): deployments.apps \"missing\" not found' >&2; exit 1\nfi\n"
        'echo "${2#deployment/}" | sed "s|^|deployment.apps/|; s|$| scaled|"\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    site = tmp_path / "site-packages"
    site.mkdir()
    install_example(site)
    return site


def env_with(site: Path) -> dict[str, str]:
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(site), env["PYTHONPATH"]])
    return env


PLAN = """
name: plugin-demo
phases:
  - id: quiesce
    steps:
      - id: stop-workers
        uses: k8s.scale
        with: {deployment: workers, replicas: 0, namespace: vnp, kubectl: "@KUBECTL@"}
    checkpoint:
      - that: "steps['stop-workers'].outputs.said == 'deployment.apps/workers scaled'"
"""


def test_the_example_plugin_is_listed_and_runs_like_a_built_in(tmp_path: Path, site: Path) -> None:
    env = env_with(site)
    kubectl = fake_kubectl(tmp_path)
    write_plan(tmp_path / "plan.yaml", PLAN.replace("@KUBECTL@", str(kubectl)))

    listed = migration(tmp_path, "steps", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "k8s.scale: Scale a Kubernetes deployment" in listed.stdout
    assert "* deployment (string): deployment to scale" in listed.stdout
    schema = json.loads(migration(tmp_path, "schema", env=env).stdout)
    assert "k8s.scale" in schema["$defs"]["StepSpec"]["properties"]["uses"]["enum"]

    dry = migration(tmp_path, "run", "plan.yaml", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert f"would run: {kubectl} scale deployment/workers --replicas=0 --namespace=vnp" in dry.stdout
    assert not (tmp_path / "kubectl.calls").exists()

    run = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert run.returncode == 0, run.stderr
    assert (
        tmp_path / "kubectl.calls"
    ).read_text() == "scale deployment/workers --replicas=0 --namespace=vnp\n"
    outputs = step_states(load_state(tmp_path / "state", "plugin-demo"))["stop-workers"]["outputs"]
    assert outputs == {"deployment": "workers", "replicas": 0, "said": "deployment.apps/workers scaled"}


def test_a_plugin_step_failure_is_one_line_from_its_step_error(tmp_path: Path, site: Path) -> None:
    env = env_with(site)
    plan = PLAN.replace("@KUBECTL@", str(fake_kubectl(tmp_path))).replace("workers,", "missing,")
    write_plan(tmp_path / "plan.yaml", plan)
    run = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", "--log-format", "json", env=env)
    assert run.returncode == 1, run.stderr  # failed; the plan has no rollback
    assert_no_traceback(run)
    step = step_states(load_state(tmp_path / "state", "plugin-demo"))["stop-workers"]
    assert step["status"] == "failed"
    assert step["error"] == (
        'kubectl exited with code 1: Error from server (NotFound): deployments.apps "missing" not found'
    )


def _install_broken_plugins(site: Path) -> None:
    (site / "broken_import.py").write_text("import a_module_that_is_not_installed\n")
    (site / "misnamed.py").write_text(
        "from migration.steps import Step, StepParams\n\n\n"
        "class Query(Step[StepParams]):\n"
        '    """Runs SQL."""\n\n'
        '    name = "pg.query"\n'
        "    Params = StepParams\n"
    )
    (site / "not_a_step.py").write_text("def helper():\n    return 1\n")
    (site / "syntax_broken.py").write_text("x = 1\ndef broken(:\n    pass\n")
    install_distribution(
        site,
        "broken-plugins",
        "1.0",
        {
            "migration.steps": {
                "broken.step": "broken_import:Thing",
                "pg.sql": "misnamed:Query",
                "util.helper": "not_a_step:helper",
                "bad.syntax": "syntax_broken:Thing",
            }
        },
    )


def test_a_broken_plugin_is_a_warning_and_breaks_nothing_else(tmp_path: Path, site: Path) -> None:
    _install_broken_plugins(site)
    env = env_with(site)

    listed = migration(tmp_path, "steps", env=env)
    assert listed.returncode == 0, listed.stderr
    assert_no_traceback(listed)
    assert "k8s.scale:" in listed.stdout and "shell:" in listed.stdout
    assert "(left out: plans that use it fail)" in listed.stderr
    assert "broken.step" not in listed.stdout and "pg.sql" not in listed.stdout
    warnings = listed.stderr
    assert (
        "step plugin entry point 'broken.step' (broken_import:Thing) failed to load: "
        "ModuleNotFoundError: No module named 'a_module_that_is_not_installed' "
        f"(at {site / 'broken_import.py'}:1)"
    ) in warnings
    assert "class Query declares name 'pg.query', but the entry point is named 'pg.sql'" in warnings
    assert "'util.helper' (not_a_step:helper) is not a migration.steps.Step subclass" in warnings
    # The plugin author is told the file, line and column of a syntax error.
    assert "'bad.syntax' (syntax_broken:Thing) failed to load: SyntaxError: " in warnings
    assert f"(at {site / 'syntax_broken.py'}:2:" in warnings

    schema = migration(tmp_path, "schema", env=env)
    assert schema.returncode == 0, schema.stderr
    uses = json.loads(schema.stdout)["$defs"]["StepSpec"]["properties"]["uses"]["enum"]
    assert "k8s.scale" in uses and "broken.step" not in uses

    write_plan(
        tmp_path / "plan.yaml",
        """
        name: unrelated
        phases:
          - id: only
            steps:
              - {id: hello, uses: shell, with: {command: [echo, hi]}}
        """,
    )
    unrelated = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert unrelated.returncode == 0, unrelated.stderr


@pytest.mark.parametrize(
    ("uses", "message"),
    [
        (
            "broken.step",
            "error: plan.yaml:5:23: phases[0].steps[0].uses: step type 'broken.step' is not available: "
            "step plugin entry point 'broken.step' (broken_import:Thing) failed to load: "
            "ModuleNotFoundError: No module named 'a_module_that_is_not_installed' "
            "(at @SITE@/broken_import.py:1)",
        ),
        (
            "pg.sql",
            "error: plan.yaml:5:23: phases[0].steps[0].uses: step type 'pg.sql' is not available: "
            "step plugin entry point 'pg.sql' "
            "(misnamed:Query): class Query declares name 'pg.query', but the entry point is named "
            "'pg.sql'; make them the same",
        ),
    ],
)
def test_a_plan_using_a_broken_plugin_gets_one_line(
    tmp_path: Path, site: Path, uses: str, message: str
) -> None:
    _install_broken_plugins(site)
    write_plan(
        tmp_path / "plan.yaml",
        f"""
        name: uses-broken
        phases:
          - id: only
            steps:
              - {{id: s, uses: {uses}}}
        """,
    )
    for command in (["validate"], ["run", "--state-dir", "state"]):
        result = migration(tmp_path, command[0], "plan.yaml", *command[1:], env=env_with(site))
        assert result.returncode == 2, result.stderr
        assert_no_traceback(result)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors == [message.replace("@SITE@", str(site))]


def test_docs_show_the_example_plugin_as_it_is() -> None:
    docs = (PROJECT / "docs" / "plugins.md").read_text()
    for path in (EXAMPLE / "pyproject.toml", EXAMPLE / "migration_k8s" / "__init__.py"):
        assert path.read_text() in docs, f"docs/plugins.md shows an old copy of {path.name}"


def test_a_broken_rollback_handler_is_a_plan_error_naming_its_line(tmp_path: Path, site: Path) -> None:
    (site / "broken_handler.py").write_text("x = 1\ndef put_back(ctx:\n    pass\n")
    (site / "handler_deps.py").write_text("import json\nimport not_installed_either\n")
    install_distribution(
        site,
        "broken-handlers",
        "1.0",
        {"migration.rollback_handlers": {"put-back": "broken_handler:put_back", "deps": "handler_deps:f"}},
    )
    for name, where in (("put-back", "SyntaxError"), ("deps", "ModuleNotFoundError")):
        write_plan(
            tmp_path / "plan.yaml",
            f"""
            name: broken-handler
            rollback: {{handler: {name}}}
            phases:
              - id: only
                steps:
                  - {{id: s, uses: shell, with: {{command: [echo, hi]}}}}
            """,
        )
        result = migration(tmp_path, "validate", "plan.yaml", env=env_with(site))
        assert result.returncode == 2, result.stderr
        assert_no_traceback(result)
        [error] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert error.startswith(
            f"error: plan.yaml:2:21: rollback.handler: rollback handler entry point {name!r}"
        )
        assert f"failed to load: {where}: " in error
        module = "broken_handler.py:2:" if name == "put-back" else "handler_deps.py:2)"
        assert f"(at {site / module}" in error


def test_a_plugin_that_names_a_missing_module_gets_no_location_of_ours(tmp_path: Path, site: Path) -> None:
    install_distribution(site, "missing-module", "1.0", {"migration.steps": {"gone.step": "no_such_mod:Cls"}})
    listed = migration(tmp_path, "steps", env=env_with(site))
    assert listed.returncode == 0, listed.stderr
    warning = next(line for line in listed.stderr.splitlines() if "'gone.step'" in line)
    assert "No module named 'no_such_mod'" in warning
    assert "registry.py" not in warning and "(at " not in warning
