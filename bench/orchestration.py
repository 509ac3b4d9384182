"""Orchestration overhead: what the runner costs per step, and to resume a long plan.

A plan of ``steps`` no-op steps (``uses: sleep, with: {seconds: 0}``) is run through
the real CLI in a subprocess (``migration run PLAN --state-dir TMP --yes``), so the
figure includes everything a step costs in production: rendering, the state
machine, the durable state write after every change, the events log.

- per step: (time of the N-step plan - time of a 1-step plan) / (N - 1), so the
  interpreter start and plan load are not counted as per-step cost;
- resume: the last step is ``require: {env: [BENCH_RESUME_OK]}``, which fails the
  first run (``on_failure: stop``); the second run, with the variable set, finds
  N-1 completed steps in the state file and runs only the last one.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import PROJECT, Figure, say

GATE_VARIABLE = "BENCH_RESUME_OK"


def plan_text(steps: int, failing_last: bool) -> str:
    lines = [
        f"name: bench-noop-{steps}",
        "description: no-op steps, to measure what the runner costs per step",
        "on_failure: stop",
        "phases:",
        "  - id: noop",
        "    steps:",
    ]
    count = steps - 1 if failing_last else steps
    lines += [f"      - {{id: s{i:04d}, uses: sleep, with: {{seconds: 0}}}}" for i in range(count)]
    if failing_last:
        lines.append(f"      - {{id: last, uses: require, with: {{env: [{GATE_VARIABLE}]}}}}")
    return "\n".join(lines) + "\n"


def migration_argv(plan: Path, state_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "migration.cli",
        "run",
        str(plan),
        "--state-dir",
        str(state_dir),
        "--yes",
        "--log-format",
        "json",
    ]


def timed_run(argv: list[str], cwd: Path, env: dict[str, str], ok: set[int]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode not in ok:
        tail = "\n".join(done.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"migration run exited {done.returncode}, expected {sorted(ok)}:\n{tail}")
    return seconds


def _environment(gate: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(PROJECT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop(GATE_VARIABLE, None)
    if gate:
        env[GATE_VARIABLE] = "1"
    return env


def _state_files(state_dir: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in state_dir.rglob("*") if p.is_file()}


def _attempts_of_first_step(state_dir: Path, plan_name: str) -> int:
    folder = state_dir / plan_name
    run_id = (folder / "current").read_text().strip()
    state = json.loads((folder / f"{run_id}.json").read_text())
    journal = folder / f"{run_id}.journal.jsonl"
    first = state["phases"][0]["steps"][0]
    if journal.exists():  # a big state may hold newer step records in its journal
        for line in journal.read_text().splitlines():
            entry = json.loads(line)
            if entry["step"]["id"] == first["id"]:
                first = entry["step"]
    return int(first.get("attempts", 0))


def measure(steps: int, repeat: int, work: Path) -> list[Figure]:
    """Per-step cost and resume time, each repeated; returns the figures."""
    folder = work / "orchestration"
    folder.mkdir(parents=True, exist_ok=True)
    plans = {}
    for name, count, failing in (("one", 1, False), ("many", steps, False), ("resume", steps, True)):
        plans[name] = folder / f"{name}.yaml"
        plans[name].write_text(plan_text(count, failing))
    one = Figure("orchestration", "1-step plan: start-up, load, 1 step, exit", 1)
    many = Figure("orchestration", f"{steps}-step plan, whole run", steps)
    per_step = Figure("orchestration", "per step (incl. durable state write)", 1)
    first = Figure("orchestration", f"{steps}-step plan, first run stopped at its last step", steps)
    resumed = Figure("orchestration", f"resume of the {steps}-step plan from its last step", 1)
    sizes: dict[str, int] = {}
    for k in range(repeat):
        say(f"orchestration: repetition {k + 1}/{repeat}")
        for figure, plan in ((one, plans["one"]), (many, plans["many"])):
            state_dir = Path(tempfile.mkdtemp(dir=folder))
            figure.samples.append(
                timed_run(migration_argv(plan, state_dir), folder, _environment(False), {0})
            )
            if figure is many:
                sizes = _state_files(state_dir)
            shutil.rmtree(state_dir)
        per_step.samples.append((many.samples[-1] - one.samples[-1]) / (steps - 1))
        state_dir = Path(tempfile.mkdtemp(dir=folder))
        argv = migration_argv(plans["resume"], state_dir)
        first.samples.append(timed_run(argv, folder, _environment(False), {1}))
        resumed.samples.append(timed_run(argv, folder, _environment(True), {0}))
        attempts = _attempts_of_first_step(state_dir, f"bench-noop-{steps}")
        if attempts != 1:
            raise RuntimeError(f"the resumed run re-ran completed steps (attempts {attempts})")
        shutil.rmtree(state_dir)
    per_step.note = "target < 5 ms"
    per_step.extra["state_files_bytes"] = sizes
    resumed.note = "completed steps not re-run (checked: attempts of the first step stay 1)"
    return [one, many, per_step, first, resumed]


def profile(steps: int, work: Path, out: Path) -> dict[str, Any]:
    """pyinstrument over a whole ``migration run`` of the N-step plan; text profile to ``out``."""
    folder = work / "orchestration-profile"
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "plan.yaml"
    plan.write_text(plan_text(steps, False))
    state_dir = folder / "state"
    argv = [sys.executable, "-m", "pyinstrument", "--renderer", "text", "--outfile", str(out)]
    argv += ["--show-all"] if os.environ.get("BENCH_PROFILE_ALL") else []
    argv += ["-m", "migration.cli", *migration_argv(plan, state_dir)[3:]]
    seconds = timed_run(argv, folder, _environment(False), {0})
    say(f"orchestration profile written to {out}")
    return {"seconds": round(seconds, 3), "profile": str(out)}


def syscalls(steps: int, work: Path) -> dict[str, int]:
    """fsync/fdatasync/rename/... counts of one N-step run (strace -c), when strace exists."""
    if shutil.which("strace") is None:
        return {}
    folder = work / "orchestration-strace"
    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "plan.yaml"
    plan.write_text(plan_text(steps, False))
    summary = folder / "strace.txt"
    traced = "fsync,fdatasync,rename,renameat,renameat2,openat,write"
    argv = ["strace", "-f", "-c", "-o", str(summary), "-e", f"trace={traced}"]
    argv += migration_argv(plan, folder / "state")
    timed_run(argv, folder, _environment(False), {0})
    counts: dict[str, int] = {}
    for line in summary.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[-1] in traced.split(",") and parts[3].isdigit():
            counts[parts[-1]] = int(parts[3])
    return counts


def summary(figures: list[Figure]) -> str:
    per_step = next(f for f in figures if f.name.startswith("per step"))
    return f"{statistics.median(per_step.samples) * 1000:.2f} ms per step"
