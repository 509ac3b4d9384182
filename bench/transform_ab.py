#!/usr/bin/env python3
"""Interleaved A/B of ``mongo.transform``: this tree against another checkout, same server, same minutes.

    git worktree add --detach /tmp/before <commit>
    python bench/transform_ab.py --before /tmp/before --docs 2000 --repeat 5
    python bench/transform_ab.py --before /tmp/before --url mongodb://127.0.0.1:27017/

Each repetition reseeds the same ``PropertyBankDetails`` documents and runs, each
in a fresh child process (``bench/child.py transform`` of the tree named), the
"before" tree, this tree, and this tree with ``workers`` (``--workers``), so a
burst of load from a neighbour hits all of them alike; each at ``--docs`` and at
``--small`` documents. Prints medians (min-max) of the seconds and of the client
CPU per document (the child's CPU, its worker processes included): over the
whole step, and per additional document, ``(CPU at docs - CPU at small) / (docs
- small)``, which leaves out what a run costs whatever its size (connecting,
counting, importing the recipe's registry, starting worker processes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import COLLECTION, PROJECT, dataset_file, drop_database, machine, open_server, say, seed

SCRATCH = "bench_ab"


def run_tree(tree: Path, url: str, log_dir: Path, **arguments: Any) -> dict[str, Any]:
    argv = [sys.executable, str(tree / "bench" / "child.py"), "transform", json.dumps(
        {"url": url, "log_dir": str(log_dir), **arguments}
    )]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise RuntimeError(f"{tree}: child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def cell(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    shown = [v * scale for v in values]
    return f"{statistics.median(shown):.{digits}f} ({min(shown):.{digits}f}-{max(shown):.{digits}f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout to compare with")
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--small", type=int, default=500, help="the smaller run, for CPU per document")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workers", type=int, default=3, help="0: leave out the workers variant")
    parser.add_argument("--batch-size", type=int, default=None, help="the step's batch_size (default: 500)")
    parser.add_argument("--url", default=None, help="server URL (default: a private FerretDB)")
    args = parser.parse_args(argv)
    server = open_server(args.url)
    common = {} if args.batch_size is None else {"batch_size": args.batch_size}
    variants = {
        f"before ({args.before})": (args.before, common),
        "after (this tree)": (PROJECT, common),
    }
    if args.workers > 1:
        variants[f"after, workers {args.workers}"] = (PROJECT, {**common, "workers": args.workers})
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    small: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        path = dataset_file(args.docs, PROJECT / "bench" / ".cache")
        small_path = dataset_file(args.small, PROJECT / "bench" / ".cache")
        url = server.database_url(SCRATCH)
        for k in range(args.repeat):
            say(f"repetition {k + 1}/{args.repeat}")
            for name, (tree, extra) in variants.items():
                for source, into in ((path, samples), (small_path, small)):
                    seed(server, SCRATCH, source, COLLECTION)
                    with tempfile.TemporaryDirectory() as log_dir:
                        into[name].append(run_tree(tree, url, Path(log_dir), **extra))
        drop_database(server, SCRATCH)
    finally:
        server.stop()
    n = args.docs
    lines = [
        f"- command: `python bench/transform_ab.py {' '.join(argv if argv is not None else sys.argv[1:])}`",
        f"- server: {server.kind}",
        f"- machine: {machine()}",
        f"- {args.docs:,} documents, {args.repeat} interleaved repetitions; medians (min-max)",
        "",
        f"| what | seconds | client CPU µs/doc, whole step | client CPU µs per additional doc "
        f"({args.small:,} to {n:,}) | migrated |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, results in samples.items():
        seconds = [r["seconds"] for r in results]
        cpu = [r["cpu_seconds"] / n for r in results]
        extra_cpu = [
            (big["cpu_seconds"] - little["cpu_seconds"]) / (n - args.small)
            for big, little in zip(results, small[name], strict=True)
        ]
        migrated = sorted({r.get("migrated") for r in results}, key=str)
        lines.append(
            f"| {name} | {cell(seconds)} | {cell(cpu, 1e6, 0)} | {cell(extra_cpu, 1e6, 0)} | {migrated} |"
        )
    names = list(samples)
    med = {name: statistics.median(r["cpu_seconds"] for r in samples[name]) for name in names}
    sec = {name: statistics.median(r["seconds"] for r in samples[name]) for name in names}
    lines += [
        "",
        f"- client CPU, after / before: {med[names[1]] / med[names[0]]:.2f}",
        f"- seconds, after / before: {sec[names[1]] / sec[names[0]]:.2f}"
        + (
            f"; workers {args.workers} / one worker: {sec[names[2]] / sec[names[1]]:.2f}"
            if len(names) > 2
            else ""
        ),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
