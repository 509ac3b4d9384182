"""Every bad plan in tests/bad_plans gives exactly its one expected line, exit 2, and runs nothing.

Each file's first line is ``# error: {file}:LINE:COL: PATH: MESSAGE``, the exact stderr
line (``{file}`` is the path as given on the command line). A second line
``# validate: warning`` marks a problem that ``validate`` only warns about (exit 0)
while ``run`` refuses it (a missing environment variable).

The ``validate`` and ``run`` calls share one interpreter (``helpers.migration_batch``:
the same entry point, exit codes and stderr) to keep the suite fast; a few plans
also go through a process of their own, exactly as users run it.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import assert_no_traceback, cli_env, migration, migration_batch, write_plan

BAD_PLANS = Path(__file__).parent / "bad_plans"
FILES = sorted(p.name for p in BAD_PLANS.glob("*.yaml"))
UNSET = "MIGRATION_TEST_UNSET_DATABASE_URL"


@dataclass
class Outcome:
    workdir: Path
    expected: str
    validate_only_warns: bool
    validate: subprocess.CompletedProcess[str]
    run: subprocess.CompletedProcess[str]


def _expectations(name: str) -> tuple[str, bool]:
    header = (BAD_PLANS / name).read_text().splitlines()[:2]
    assert header and header[0].startswith("# error: "), f"{name}: first line must be '# error: ...'"
    return header[0][2:].replace("{file}", name), len(header) > 1 and header[1] == "# validate: warning"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """All bad plans checked at once, each in its own folder."""
    root = tmp_path_factory.mktemp("bad_plans")
    env = cli_env(drop=[UNSET])
    workdirs = {}
    for name in FILES:
        workdirs[name] = root / name.removesuffix(".yaml")
        workdirs[name].mkdir()
        shutil.copy(BAD_PLANS / name, workdirs[name] / name)
    runs = migration_batch([(workdirs[name], ["run", name, "--state-dir", "state"]) for name in FILES], env)
    validates = migration_batch([(workdirs[name], ["validate", name]) for name in FILES], env)
    return {
        name: Outcome(workdirs[name], *_expectations(name), validate, run)
        for name, validate, run in zip(FILES, validates, runs, strict=True)
    }


def test_there_are_enough_bad_plans() -> None:
    assert len(FILES) >= 12


@pytest.mark.parametrize("name", FILES)
def test_bad_plan_gives_its_one_line_and_exit_2(outcomes: dict[str, Outcome], name: str) -> None:
    outcome = outcomes[name]
    for result in (outcome.validate, outcome.run):
        assert_no_traceback(result)
        assert result.stdout == ""
    if outcome.validate_only_warns:
        warning = "warning: " + outcome.expected.removeprefix("error: ")
        assert outcome.validate.stderr == f"{warning}\n{name}: ok\n"
        assert outcome.validate.returncode == 0
    else:
        assert outcome.validate.stderr == outcome.expected + "\n"
        assert outcome.validate.returncode == 2
    assert outcome.run.stderr == outcome.expected + "\n"
    assert outcome.run.returncode == 2
    # Nothing ran and nothing was written: the state dir was not even created.
    assert sorted(p.name for p in outcome.workdir.iterdir()) == [name]


SEPARATE_PROCESS = ["yaml_syntax_error.yaml", "missing_with_field.yaml", "missing_env_var.yaml"]


@pytest.mark.parametrize("name", SEPARATE_PROCESS)
def test_bad_plan_in_a_process_of_its_own(tmp_path: Path, name: str) -> None:
    shutil.copy(BAD_PLANS / name, tmp_path / name)
    expected, only_warns = _expectations(name)
    env = cli_env(drop=[UNSET])
    validate = migration(tmp_path, "validate", name, env=env)
    run = migration(tmp_path, "run", name, "--state-dir", "state", env=env)
    assert (validate.returncode, run.returncode) == (0 if only_warns else 2, 2)
    assert run.stderr == expected + "\n"
    assert validate.stderr.splitlines()[0] == (
        "warning: " + expected.removeprefix("error: ") if only_warns else expected
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_env_variable_is_fine_once_set(tmp_path: Path) -> None:
    shutil.copy(BAD_PLANS / "missing_env_var.yaml", tmp_path / "plan.yaml")
    env = cli_env({UNSET: "mongodb://localhost:27017/vnp"})
    assert migration(tmp_path, "validate", "plan.yaml", env=env).stderr == "plan.yaml: ok\n"
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "ran.txt").exists()


def test_optional_env_lookups_are_not_required(tmp_path: Path) -> None:
    plan = """
        name: optional-env
        vars:
          a: "{{ env.get('UNSET', 'fallback') }}"
          b: "{{ env.UNSET | default('other') }}"
        phases:
          - id: only
            steps:
              - id: say
                uses: shell
                with: {command: "echo {{ vars.a }} {{ vars.b }} > said.txt", shell: true}
        """
    write_plan(tmp_path / "plan.yaml", plan.replace("UNSET", UNSET))
    env = cli_env(drop=[UNSET])
    assert migration(tmp_path, "validate", "plan.yaml", env=env).stderr == "plan.yaml: ok\n"
    result = migration(tmp_path, "run", "plan.yaml", "--state-dir", "state", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "said.txt").read_text() == "fallback other\n"
