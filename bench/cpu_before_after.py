#!/usr/bin/env python3
"""Client CPU per document of backup and restore: another checkout's code against this one's.

    python bench/cpu_before_after.py --before /path/to/other/checkout --docs 20000

Each figure is ``bench/child.py`` of that checkout (its own ``migration`` package)
run as a process, interleaved in one run on one server; CPU is the child's own
(user + system, all threads) for the operation, divided by the documents moved.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import COLLECTION, PROJECT, dataset_file, drop_database, open_server, say, seed, workdir

SOURCE, TARGET = "bench_cpu_source", "bench_cpu_target"


def child(checkout: Path, operation: str, **arguments: Any) -> dict[str, Any]:
    argv = [sys.executable, str(checkout / "bench" / "child.py"), operation, json.dumps(arguments)]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=checkout, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout measured as 'before'")
    parser.add_argument("--docs", type=int, default=20_000, help="documents per collection (2 collections)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--url", default=None)
    args = parser.parse_args()
    server = open_server(args.url)
    work = workdir()
    try:
        path = dataset_file(args.docs, PROJECT / "bench" / ".cache")
        seed(server, SOURCE, path)
        seed(server, SOURCE, path, collection=COLLECTION + "_copy")
        n = 2 * args.docs
        variants = {
            "before": (args.before, {}),
            "after, parallel_collections 1": (PROJECT, {"parallel_collections": 1}),
            "after, parallel_collections 4": (PROJECT, {"parallel_collections": 4}),
        }
        cpu: dict[str, list[float]] = {}
        wall: dict[str, list[float]] = {}

        def add(key: str, result: dict[str, Any]) -> None:
            cpu.setdefault(key, []).append(result["cpu_seconds"] / n * 1e6)
            wall.setdefault(key, []).append(result["seconds"])

        for k in range(args.repeat):
            say(f"repetition {k + 1}/{args.repeat}")
            for label, (checkout, extra) in variants.items():
                out = str(work / "b")
                kept = child(checkout, "backup", url=server.database_url(SOURCE), out=out, keep=True, **extra)
                add(f"backup (verify: counts), {label}", kept)
                restore_args = {"url": server.database_url(TARGET), "from": kept["path"], **extra}
                if checkout == PROJECT:
                    add(
                        f"restore (verify: counts), {label}",
                        child(checkout, "restore", verify="counts", **restore_args),
                    )
                    add(f"restore (verify: checksums), {label}", child(checkout, "restore", **restore_args))
                    add(
                        f"restore (verify: inserts), {label}",
                        child(checkout, "restore", verify="inserts", **restore_args),
                    )
                else:
                    add(f"restore (with its read-back), {label}", child(checkout, "restore", **restore_args))
                subprocess.run(["rm", "-rf", kept["path"]], check=True)
        print(f"server: {server.kind}; {n:,} documents (2 collections); medians of {args.repeat}\n")
        print("| what | client CPU µs/doc | seconds |")
        print("|---|---:|---:|")
        for key in cpu:
            print(f"| {key} | {statistics.median(cpu[key]):.2f} | {statistics.median(wall[key]):.2f} |")
    finally:
        drop_database(server, SOURCE)
        drop_database(server, TARGET)
        server.stop()
        subprocess.run(["rm", "-rf", str(work)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
