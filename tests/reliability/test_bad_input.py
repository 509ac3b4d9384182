"""Bad input: malformed plans, fuzzed, and the inputs that still break the tool.

Every malformed plan must end with exit 2 and one ``error: ...`` line on stderr,
no traceback, nothing written (not even the state directory), unless it happens
to be valid (``validate`` exits 0), in which case it runs its harmless steps.
Most plans go through click's CliRunner in this process; a sample runs as real
``migration`` processes. ``RELIABILITY_FUZZ_EXAMPLES`` sets how many hypothesis tries.

    python -m pytest -q tests/reliability/test_bad_input.py
"""

from __future__ import annotations

import os
import random
import resource
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import MIGRATION, cli_env, listing, migration, migration_batch, write_plan
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .harness import TALLY, Invocation, invoke
from .malformed import PAYLOADS, malformed_plan

Listing = list[tuple[str, int, float]]
EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "200"))
SUBPROCESS_SAMPLE = 6


def check_outcome(workdir: Path, before: Listing, run: Invocation, validate: Invocation) -> None:
    """The contract for any plan, good or bad."""
    for what, outcome in (("run", run), ("validate", validate)):
        text = outcome.stdout + outcome.stderr
        assert "Traceback" not in text, f"{what}: {text[-2000:]}"
        assert "internal error" not in text, f"{what}: {text[-2000:]}"
    assert validate.code in (0, 2), validate.stderr
    if validate.code == 2:
        assert validate.stderr.count("\n") == 1 and validate.stderr.startswith("error: "), validate.stderr
    else:
        lines = validate.stderr.splitlines()
        assert lines[-1] == "plan.yaml: ok", validate.stderr
        assert all(line.startswith("warning: ") for line in lines[:-1]), validate.stderr
    if run.code == 2:
        assert run.stdout == ""
        assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: "), run.stderr
        assert listing(workdir) == before, "a refused plan wrote something"
    else:
        # Only a valid plan may run (then its harmless steps pass or fail as steps do).
        assert validate.code == 0, (
            f"validate refused the plan but run exited {run.code}: {run.stderr[-2000:]}"
        )
        assert run.code in (0, 1, 3), run.stderr[-2000:]
    assert not (workdir / "pwned").exists(), "a template ran a command"


def _fresh(text: bytes) -> Path:
    workdir = Path(tempfile.mkdtemp(prefix="fuzz-"))
    (workdir / "plan.yaml").write_bytes(text)
    return workdir


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.randoms(use_true_random=False))
def test_fuzzed_plans_end_in_exit_2_and_one_line_or_are_valid(rng: random.Random) -> None:
    workdir = _fresh(malformed_plan(rng))
    try:
        before = listing(workdir)
        run = invoke(workdir, "run", "plan.yaml", "--state-dir", "state")
        after_run = listing(workdir) if run.code == 2 else None
        validate = invoke(workdir, "validate", "plan.yaml")
        TALLY["fuzz: plans tried in-process"] += 1
        TALLY[f"fuzz: exit {run.code}"] += 1
        check_outcome(workdir, before if after_run is None else after_run, run, validate)
        if run.code == 2:
            assert after_run == before
    finally:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)


def test_fuzzed_plans_as_real_processes(tmp_path: Path) -> None:
    """A sample through ``python -m migration.cli``: same contract as in-process."""
    seed = int(os.environ.get("RELIABILITY_SEED", "20240611"))
    texts = [malformed_plan(random.Random(f"{seed}-sub-{i}")) for i in range(SUBPROCESS_SAMPLE)]
    env = cli_env(drop=["MIGRATION_FUZZ_UNSET"])

    def one(i: int) -> tuple[Path, Listing, Invocation, Invocation]:
        workdir = tmp_path / f"p{i}"
        workdir.mkdir()
        (workdir / "plan.yaml").write_bytes(texts[i])
        before = listing(workdir)
        ran = migration(workdir, "run", "plan.yaml", "--state-dir", "state", env=env)
        # A refused plan must be refused by validate too; only for the others is it worth a process.
        validated = (
            migration(workdir, "validate", "plan.yaml", env=env)
            if ran.returncode != 2 or i % 3 == 0
            else subprocess.CompletedProcess([], 2, "", "error: (not checked)\n")
        )
        return (
            workdir,
            before,
            Invocation(ran.returncode, ran.stdout, ran.stderr),
            Invocation(validated.returncode, validated.stdout, validated.stderr),
        )

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(one, range(SUBPROCESS_SAMPLE)))
    codes = []
    for workdir, before, ran, validated in outcomes:
        TALLY["fuzz: plans tried as processes"] += 1
        codes.append(ran.code)
        if ran.code == 2:
            assert listing(workdir) == before
        check_outcome(workdir, before, ran, validated)
    assert codes.count(2) >= SUBPROCESS_SAMPLE // 2, codes


@pytest.mark.parametrize("payload", PAYLOADS)
def test_template_injection_in_vars_is_refused_before_anything_runs(payload: str, tmp_path: Path) -> None:
    """In ``vars`` (rendered before the run starts) every attempt is one line and exit 2."""
    plan = (
        "name: inject\nvars:\n  x: " + _yaml_str(payload) + "\n"
        "phases:\n  - id: a\n    steps:\n      - {id: s, uses: shell, with: {command: [touch, ran]}}\n"
    )
    (tmp_path / "plan.yaml").write_text(plan)
    before = listing(tmp_path)
    run = invoke(tmp_path, "run", "plan.yaml", "--state-dir", "state")
    TALLY["injection: payloads tried in vars"] += 1
    if run.code == 0:
        # Harmless templates ({{ vars }}, {{ 'x' * 1000 }}) are fine: they render to text.
        assert payload in ("{{ vars }}", "{{ env }}", "{{ 'x' * 1000 }}", "{{ 9**9**9 }}"), run.stderr
        assert (tmp_path / "ran").exists()
        return
    assert run.code == 2, run.stderr
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("error: plan.yaml:3:"), run.stderr
    assert listing(tmp_path) == before
    assert not (tmp_path / "pwned").exists()


def _yaml_str(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


SANDBOX_ESCAPES = [
    "{{ ''.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ self._TemplateReference__context }}",
    "{{ no_such_name }}",
]


def test_templates_that_can_never_render_are_refused_before_anything_runs(tmp_path: Path) -> None:
    calls = []
    for i, payload in enumerate(SANDBOX_ESCAPES):
        expression = payload.removeprefix("{{ ").removesuffix(" }}")
        for where, step in (
            ("with", f"{{id: s, uses: shell, with: {{command: [echo, {_yaml_str(payload)}]}}}}"),
            ("when", f"{{id: s, uses: shell, when: {_yaml_str(expression)}, with: {{command: [echo]}}}}"),
        ):
            workdir = tmp_path / f"{where}-{i}"
            workdir.mkdir()
            write_plan(
                workdir / "plan.yaml",
                "name: inject\nphases:\n  - id: a\n    steps:\n"
                "      - {id: first, uses: shell, with: {command: [touch, ran-first]}}\n"
                f"      - {step}\n",
            )
            calls.append((workdir, ["run", "plan.yaml", "--state-dir", "state"]))
    results = migration_batch(calls)
    TALLY["injection: payloads tried in steps"] += len(results)
    for (workdir, _), result in zip(calls, results, strict=True):
        assert result.returncode == 2, (workdir.name, result.stderr[-1500:])
        assert not (workdir / "ran-first").exists(), f"{workdir.name}: a step ran before the refusal"


# -- inputs that would exhaust an unbounded loader or template engine ---------------------------

ALIAS_BOMB = (
    "name: bomb\na: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    + "".join(
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    )
    + "phases: []\n"
)


def _limited(workdir: Path, text: str, cpu_seconds: int) -> tuple[int | None, str, int]:
    """``migration validate`` under a 1.5 GB address-space cap and a CPU-time limit.

    Returns the exit code (None when it was stopped for using too much CPU or wall
    time), stderr and the peak resident memory in kB.
    """
    (workdir / "plan.yaml").write_text(text)
    err = workdir / "stderr.txt"

    def cap() -> None:
        limit = 1536 * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        # CPU time, not wall time: fair however busy the machine is.
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))

    with err.open("w") as sink:
        proc = subprocess.Popen(
            [*MIGRATION, "validate", "plan.yaml"],
            cwd=workdir,
            env=cli_env(),
            stdout=subprocess.DEVNULL,
            stderr=sink,
            preexec_fn=cap,
        )
    deadline = time.monotonic() + cpu_seconds * 6
    timed_out = False
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            timed_out = True
            os.kill(proc.pid, 9)
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stopped = timed_out or proc.returncode < 0
    return None if stopped else proc.returncode, err.read_text(), int(usage.ru_maxrss)


ONE_STEP = "phases:\n  - id: a\n    steps:\n      - {id: s, uses: shell, with: {command: [true]}}\n"
BOMBS = {
    "yaml-alias-bomb": ALIAS_BOMB,
    "nested-loops": 'name: loops\nvars:\n  x: "{% for i in range(100000) %}{% for j in range(100000) %}'
    '{% endfor %}{% endfor %}"\n' + ONE_STEP,
    "lipsum": 'name: lorem\nvars:\n  x: "{{ lipsum(100000) }}"\n' + ONE_STEP,
    "string-repeat": "name: big\nvars:\n  x: \"{{ 'a' * 400000000 }}\"\n" + ONE_STEP,
    "deep-nesting": "name: deep\nvars:\n  x: " + "[" * 3000 + "]" * 3000 + "\nphases: []\n",
    "long-integer": "name: long\nvars:\n  x: " + "9" * 5000 + "\nphases: []\n",
}


CPU_SECONDS = 3
# The slowest to give up; the others show the same two faults (no bound, escaping errors).
SLOW_BOMBS = {"lipsum", "string-repeat"}


@pytest.fixture(scope="module")
def bomb_outcomes(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> dict[str, tuple[int | None, str, int, float]]:
    """All bombs, two at a time (each alone in its process, capped), to keep the wall time down."""

    def one(name: str) -> tuple[int | None, str, int, float]:
        started = time.monotonic()
        code, stderr, rss = _limited(tmp_path_factory.mktemp(name), BOMBS[name], cpu_seconds=CPU_SECONDS)
        return code, stderr, rss, time.monotonic() - started

    # Only the bombs whose tests were selected (-m "not slow" leaves the slow ones out).
    selected = {item.name for item in request.session.items}
    names = [
        n for n in sorted(BOMBS) if f"test_resource_bombs_are_refused_quickly_with_one_line[{n}]" in selected
    ]
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


@pytest.mark.parametrize(
    "bomb", [pytest.param(b, marks=[pytest.mark.slow] if b in SLOW_BOMBS else []) for b in sorted(BOMBS)]
)
def test_resource_bombs_are_refused_quickly_with_one_line(
    bomb: str, bomb_outcomes: dict[str, tuple[int | None, str, int, float]]
) -> None:
    code, stderr, max_rss_kb, seconds = bomb_outcomes[bomb]
    TALLY["bad input: resource bombs tried"] += 1
    assert code == 2, (
        f"exit {code} (None: stopped at {CPU_SECONDS} s of CPU) after {seconds:.1f}s: {stderr[-500:]}"
    )
    assert stderr.count("\n") == 1 and stderr.startswith("error: plan.yaml"), stderr
    assert "internal error" not in stderr
    assert max_rss_kb < 300_000, f"peak memory {max_rss_kb // 1024} MB to refuse one plan"


def test_bad_command_line_values_are_one_line_exit_2(tmp_path: Path) -> None:
    write_plan(
        tmp_path / "plan.yaml",
        "name: cli\nphases:\n  - id: a\n    steps:\n"
        "      - {id: s, uses: shell, with: {command: [touch, ran]}}\n",
    )
    before = listing(tmp_path)
    cases = [
        ["run", "plan.yaml", "--var", "novalue"],
        ["run", "plan.yaml", "--var", "1bad=1"],
        ["run", "plan.yaml", "--env-file", "missing.env"],
        ["run", "missing.yaml"],
        ["run", "plan.yaml", "--log-format", "xml"],
        ["report", "plan.yaml", "--format", "pdf"],
        ["run", "/dev/null"],
        ["run", "."],
        ["validate", "plan.yaml", "--var", "=x"],
    ]
    results = [invoke(tmp_path, *case) for case in cases]
    for case, result in zip(cases, results, strict=True):
        TALLY["bad input: command lines tried"] += 1
        assert result.code == 2, (case, result.stderr)
        assert "Traceback" not in result.stderr
    assert listing(tmp_path) == before


@pytest.mark.parametrize("where", ["that", "when"])
def test_checkpoint_or_when_on_a_missing_output_fails_cleanly(where: str, tmp_path: Path) -> None:
    # A python step declares no outputs, so only the run can find one missing (a step type
    # that declares its outputs has the name refused at load: tests/bad_plans).
    step = '      - {id: s1, uses: python, with: {function: "builtins:dict"}}\n'
    if where == "when":
        step += (
            '      - {id: s2, uses: shell, when: "steps.s1.outputs.nope", with: {command: [touch, ran2]}}\n'
        )
    else:
        step += '    checkpoint:\n      - that: "steps.s1.outputs.nope"\n'
    plan = "name: undefined-output\non_failure: rollback\nrollback:\n"
    plan += "  - {id: undo, uses: shell, with: {command: [touch, undone]}}\n"
    plan += "phases:\n  - id: a\n    steps:\n" + step
    (tmp_path / "plan.yaml").write_text(plan)
    result = invoke(tmp_path, "run", "plan.yaml", "--state-dir", "state")
    TALLY["bad input: undefined outputs in checkpoints/when"] += 1
    assert "internal error" not in result.stderr, result.stderr[-500:]
    assert result.code == 3, result.stderr[-500:]
    assert "nope" in result.stderr.strip().splitlines()[-1]
    assert (tmp_path / "undone").exists(), "the rollback did not run"
