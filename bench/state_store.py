#!/usr/bin/env python3
"""Per-step overhead of the state stores: the file store and the MongoDB store, same run.

    python bench/state_store.py                      # 1,000 steps, a private FerretDB
    python bench/state_store.py --steps 2000 --repeat 3
    MIGRATION_TEST_MONGO_URL=mongodb://host:27017/ python bench/state_store.py   # a real mongod

Each step is persisted as the runner persists it: ``save_step`` when it starts
(durable) and ``save_step`` when it ends (``durable=False``), and, with
``--progress N``, N progress records in between (a transform saving its last
committed batch). The state is a 1,000-step run, so both stores journal step
changes and compact every 256 entries, as in a real big plan. Figures: median,
p95 and mean milliseconds per step (all its writes) and per write; plus the same
with the two events the runner emits per step. Without a URL it starts a private
FerretDB (``scripts/testdb.py``) and stops it at the end. Target (issue 13):
under 5 ms median per step with the MongoDB store on the local test server.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import machine, open_server, say

from migration.secrets import Redactor
from migration.state import StateStore
from migration.store_mongo import MongoStateStore, StateBackend


def big_state(run_id: str, plan: str, steps: int) -> dict[str, Any]:
    """A run of ``steps`` shell steps in 10 phases, as ``run_document.new_state`` shapes it."""
    per_phase = max(1, steps // 10)
    return {
        "schema_version": 1,
        "run_id": run_id,
        "plan_name": plan,
        "plan_path": f"plans/{plan}.yaml",
        "plan_digest": "sha256:" + "0" * 64,
        "status": "running",
        "started_at": "2026-01-01T00:00:00.000Z",
        "finished_at": None,
        "phases": [
            {
                "id": f"phase-{p}",
                "status": "running",
                "started_at": None,
                "finished_at": None,
                "checkpoint": {"status": "pending", "results": []},
                "steps": [
                    {
                        "id": f"step-{p}-{i}",
                        "uses": "shell",
                        "status": "pending",
                        "attempts": 0,
                        "outputs": {},
                        "error": None,
                        "started_at": None,
                        "finished_at": None,
                    }
                    for i in range(per_phase)
                ],
            }
            for p in range(10)
        ],
        "rollback": {"status": None, "reason": None, "steps": [], "error": None},
    }


def measure(store: StateBackend, steps: int, progress: int, with_events: bool) -> dict[str, Any]:
    """Drive one run through the store; the times of each step's writes, in ms."""
    state = big_state(f"20260101T000000Z-{uuid.uuid4().hex[:6]}", store.plan_name, steps)
    store.acquire()
    try:
        store.save(state)
        store.set_current(state["run_id"])
        events = store.open_events(state["run_id"]) if with_events else None
        per_step: list[float] = []
        per_write: list[float] = []

        def timed(write: Callable[[], None]) -> float:
            started = time.perf_counter()
            write()
            elapsed = (time.perf_counter() - started) * 1000
            per_write.append(elapsed)
            return elapsed

        for phase in state["phases"]:
            for step in phase["steps"]:
                spent = 0.0
                step.update(status="running", attempts=1, started_at="2026-01-01T00:00:01.000Z")
                spent += timed(lambda step=step: store.save_step(state, step))
                if events is not None:
                    spent += timed(lambda step=step: events.emit("step", step=step["id"], dest="running"))
                for batch in range(progress):
                    step["progress"] = {"last_id": batch * 1000, "batches": batch + 1}
                    spent += timed(lambda step=step: store.save_step(state, step))
                step.pop("progress", None)
                step.update(status="succeeded", finished_at="2026-01-01T00:00:02.000Z")
                step["outputs"] = {"exit_code": 0}
                spent += timed(lambda step=step: store.save_step(state, step, durable=False))
                if events is not None:
                    spent += timed(lambda step=step: events.emit("step", step=step["id"], dest="succeeded"))
                per_step.append(spent)
        state["status"] = "succeeded"
        store.save(state)
    finally:
        store.release()
    return {
        "steps": len(per_step),
        "writes": len(per_write),
        "state_bytes": len(json.dumps(state)),
        "step_ms": summary(per_step),
        "write_ms": summary(per_write),
    }


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 3),
        "p95": round(ordered[int(len(ordered) * 0.95) - 1], 3),
        "mean": round(statistics.fmean(ordered), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="steps in the run (default 1000)")
    parser.add_argument("--progress", type=int, default=0, help="progress records per step (default 0)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per store; the best median is kept")
    parser.add_argument("--url", default=None, help="server URL (default: MIGRATION_TEST_MONGO_URL)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)

    server = open_server(args.url)
    work = Path(tempfile.mkdtemp(prefix="bench-state-"))
    database = "bench_state_" + uuid.uuid4().hex[:8]
    results: dict[str, Any] = {"machine": machine(), "server": server.kind, "steps": args.steps, "runs": {}}
    try:
        stores: dict[str, Callable[[str], StateBackend]] = {
            "file": lambda plan: StateStore(work / "state", plan, Redactor()),
            "mongodb": lambda plan: MongoStateStore(
                server.database_url(database), plan, Redactor(), local_dir=work / "local"
            ),
        }
        for with_events in (False, True):
            for name, make in stores.items():
                label = f"{name}{' + events' if with_events else ''}"
                say(f"{label}: {args.steps} steps x {args.repeat}")
                runs = [
                    measure(make(f"bench-{i}-{int(with_events)}"), args.steps, args.progress, with_events)
                    for i in range(args.repeat)
                ]
                results["runs"][label] = min(runs, key=lambda r: r["step_ms"]["median"])
    finally:
        with server.client() as client:
            client.drop_database(database)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    print(f"# State store overhead, {args.steps} steps ({args.progress} progress records per step)\n")
    print(f"{results['machine']}; {results['server']}\n")
    print("| store | ms per step: median | p95 | mean | ms per write: median | writes |")
    print("|---|---|---|---|---|---|")
    for label, run in results["runs"].items():
        step, write = run["step_ms"], run["write_ms"]
        cells = [label, step["median"], step["p95"], step["mean"], write["median"], run["writes"]]
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
