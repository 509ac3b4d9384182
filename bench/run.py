#!/usr/bin/env python3
"""Benchmarks of migration against mongodump, mongorestore and a naive loop.

    python bench/run.py                       # everything: 20,000 documents, 3 repetitions
    python bench/run.py --docs 100000         # the 100k figures of docs/benchmarks.md (~45 min here)
    python bench/run.py --docs 20000 --repeat 5 --only backup,restore
    python bench/run.py --million             # also memory at 1,000,000 documents
    python bench/run.py --profile             # also pyinstrument profiles of backup and restore
    python bench/run.py --compare --docs 20000   # ours vs mongodump/mongorestore (if on PATH)
                                              # and the naive loops, side by side
    MIGRATION_TEST_MONGO_URL=mongodb://host:27017/ python bench/run.py   # a real mongod

Sections: backup, restore, transform, sweep (batch sizes, workers, write
concerns), memory, orchestration. Without a URL it starts a private FerretDB
(``scripts/testdb.py``) and stops it at the end. Results: a Markdown report on
stdout, and everything as JSON in ``bench/results/`` (``--json`` to choose the
file). See docs/benchmarks.md for what the figures mean and which ones FerretDB
distorts.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare
import orchestration
import sections
from harness import PROJECT, Figure, machine, open_server, say, workdir

ALL = ("backup", "restore", "transform", "sweep", "memory", "orchestration")
# 20,000, not 100,000: on FerretDB (4-6k documents/s read, and every exact count a
# full read) the whole run at 100,000 takes ~45 minutes on this 2-core machine.
DEFAULT_DOCS = 20_000
# FerretDB answers every {_id: X} statement with a sequential scan (see
# docs/benchmarks.md), so per-document updates cost O(N) each there: the transform
# comparison runs on fewer documents on FerretDB.
FERRETDB_TRANSFORM_DOCS = 2_000
SWEEP_DOCS = 10_000


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=DEFAULT_DOCS, help="documents for backup/restore")
    parser.add_argument("--transform-docs", type=int, default=None, help="documents for transform")
    parser.add_argument("--sweep-docs", type=int, default=SWEEP_DOCS, help="documents for the sweeps")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each figure")
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated sections")
    parser.add_argument("--million", action="store_true", help="memory at 1,000,000 documents too")
    parser.add_argument("--steps", type=int, default=1000, help="no-op steps for orchestration")
    parser.add_argument("--profile", action="store_true", help="pyinstrument profiles (bench/results/)")
    parser.add_argument("--url", default=None, help="server URL (default: MIGRATION_TEST_MONGO_URL)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON results")
    parser.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    parser.add_argument(
        "--compare",
        action="store_true",
        help="only the side-by-side table: ours vs mongodump/mongorestore (when on PATH) and naive loops",
    )
    args = parser.parse_args(argv)
    unknown = set(args.only.split(",")) - set(ALL)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(ALL)}")
    return args


def _cell_seconds(figure: Figure) -> str:
    if not figure.samples:
        return "n/a"
    low, high = min(figure.samples), max(figure.samples)
    if len(figure.samples) == 1:
        return f"{figure.median:.3f}"
    return f"{figure.median:.3f} ({low:.3f}-{high:.3f})"


def _table(figures: list[Figure]) -> list[str]:
    lines = [
        "| what | docs | seconds, median (min-max) | docs/s | MB/s | client CPU s | peak RSS MB | notes |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for figure in figures:
        row = figure.as_dict()
        rate = f"{row['docs_per_second']:,.0f}" if figure.samples and figure.docs > 1 else ""
        mbps = f"{row['mb_per_second']:.2f}" if "mb_per_second" in row and figure.samples else ""
        rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else ""
        cpu = f"{row['client_cpu_seconds']:.2f}" if "client_cpu_seconds" in row else ""
        notes = [figure.note] if figure.note else []
        shown = ("ratio", "speedup", "update_one", "guarded", "cpu_us")
        notes += [f"{k}={v}" for k, v in figure.extra.items() if k.startswith(shown)]
        seconds = _cell_seconds(figure)
        if figure.name.startswith(("per step", "one find_one")) and figure.samples:
            seconds = f"{figure.median * 1000:.2f} ms ({min(figure.samples) * 1000:.2f}-"
            seconds += f"{max(figure.samples) * 1000:.2f})"
        docs = f"{figure.docs:,}" if figure.docs else ""
        lines.append(
            f"| {figure.name} | {docs} | {seconds} | {rate} | {mbps} | {cpu} | {rss} | {'; '.join(notes)} |"
        )
    return lines


def report(meta: dict[str, Any], results: dict[str, list[Figure]]) -> str:
    lines = [
        f"# Benchmark run {meta['started_at']}",
        "",
        f"- command: `{meta['command']}`",
        f"- server: {meta['server']}",
        f"- machine: {meta['machine']}",
        f"- repetitions: {meta['repeat']}; seconds are medians (min-max) of the repetitions",
        "",
    ]
    if meta.get("compare_table"):
        lines += ["## side by side (run.py --compare)", "", *meta["compare_table"], ""]
        lines += [f"- tools on PATH: {meta.get('tools')}", ""]
    for name, figures in results.items():
        lines += [f"## {name}", "", *_table(figures), ""]
    for key in ("orchestration_syscalls", "orchestration_profile", "profiles", "server_peak_rss_mb"):
        if meta.get(key):
            lines.append(f"- {key}: `{json.dumps(meta[key])}`")
    return "\n".join(lines) + "\n"


def _profiles(setup: sections.Setup, out_dir: Path, chosen: list[str]) -> dict[str, str]:
    """Profiles of the backup and restore steps (pyinstrument) and the transform (cProfile, CPU)."""
    import bench_profile

    written = {}
    if "backup" in chosen or "restore" in chosen or "transform" not in chosen:
        written = bench_profile.backup_and_restore(setup, out_dir)
    if "transform" in chosen:
        written["transform"] = bench_profile.transform_cpu(setup, out_dir)
    return written


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    chosen = [] if args.compare else [name for name in ALL if name in args.only.split(",")]
    started = datetime.now(UTC)
    results_dir = PROJECT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    work = workdir()
    server = None
    meta: dict[str, Any] = {
        "started_at": started.isoformat(timespec="seconds"),
        "command": "python bench/run.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "repeat": args.repeat,
    }
    results: dict[str, list[Figure]] = {}
    clock = time.perf_counter()
    try:
        needs_server = any(name != "orchestration" for name in chosen) or args.profile or args.compare
        if needs_server:
            server = open_server(args.url)
            meta["server"] = server.kind
            say(f"server: {server.kind}")
        else:
            meta["server"] = "none (orchestration only)"
        if server is not None:
            transform_docs = args.transform_docs or (
                min(args.docs, FERRETDB_TRANSFORM_DOCS) if server.ferretdb else args.docs
            )
            setup = sections.Setup(
                server=server,
                docs=args.docs,
                transform_docs=transform_docs,
                sweep_docs=min(args.sweep_docs, args.docs),
                repeat=args.repeat,
                work=work,
                cache=PROJECT / "bench" / ".cache",
                million=args.million,
                tools={tool: shutil.which(tool) is not None for tool in ("mongodump", "mongorestore")},
            )
            meta["tools"] = setup.tools
            if args.compare:
                rows = compare.backup_and_restore(setup) + compare.transform(setup)
                meta["compare_table"] = compare.table(server.kind, rows)
                meta["compare"] = compare.as_dict(server.kind, rows)
                results["compare"] = compare.figures(rows)
            for name in ("backup", "restore", "transform", "sweep"):
                if name in chosen:
                    results[name] = getattr(sections, name)(setup)
            if "memory" in chosen:
                previous = [f for figures in results.values() for f in figures]
                results["memory"] = sections.memory(setup, previous)
            if args.profile:
                meta["profiles"] = _profiles(setup, results_dir, chosen)
            peak = server.peak_rss_kb()
            if peak:
                meta["server_peak_rss_mb"] = round(peak / 1024, 1)
        if "orchestration" in chosen:
            results["orchestration"] = orchestration.measure(args.steps, args.repeat, work)
            meta["orchestration_syscalls"] = orchestration.syscalls(args.steps, work)
            if args.profile:
                out = results_dir / f"profile-orchestration-{args.steps}.txt"
                meta["orchestration_profile"] = orchestration.profile(args.steps, work, out)
    finally:
        if server is not None:
            server.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    meta["elapsed_seconds"] = round(time.perf_counter() - clock, 1)
    text = report(meta, results)
    print(text)
    target = args.json or results_dir / f"run-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    payload = {"meta": meta, "results": {k: [f.as_dict() for f in v] for k, v in results.items()}}
    target.write_text(json.dumps(payload, indent=2) + "\n")
    (target.with_suffix(".md")).write_text(text)
    say(f"results in {target} (and .md); took {meta['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
