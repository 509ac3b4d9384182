"""Profiles for ``run.py --profile``: pyinstrument of backup and restore, cProfile of the transform.

Run in-process, on the collection the earlier sections left in ``bench_source``; and, as a
script, ``transform_phases``: the client CPU of each part of the transform's batch loop.
Wall-clock profiles: on FerretDB nearly all of it is ``socket.recv_into`` (waiting
for the server), which is the point: it shows which server round trips dominate.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import structlog
from harness import say
from sections import SOURCE, TARGET, Setup

from migration.steps.base import StepContext
from migration.steps.mongo.backup import MongoBackup
from migration.steps.mongo.restore import MongoRestore


def _profiler() -> Any:
    try:
        from pyinstrument import Profiler
    except ImportError as exc:
        raise SystemExit("bench: --profile needs pyinstrument (pip install pyinstrument)") from exc
    return Profiler(interval=0.001)


def backup_and_restore(setup: Setup, out_dir: Path) -> dict[str, str]:
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    written: dict[str, str] = {}
    out = setup.work / "profile-backups"
    out.mkdir(parents=True, exist_ok=True)
    ctx = StepContext(
        step_id="backup", params=MongoBackup.Params(uri=setup.url(SOURCE), out=str(out)), workdir=out
    )
    profiler = _profiler()
    profiler.start()
    outputs = MongoBackup().run(ctx)
    profiler.stop()
    docs = outputs["total_records"]
    path = out_dir / f"profile-backup-{docs}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False))
    written["backup"] = str(path)
    params = MongoRestore.Params.model_validate(
        {"uri": setup.url(TARGET), "from": outputs["path"], "drop": True, "allow_other_database": True}
    )
    rctx = StepContext(step_id="restore", params=params, workdir=out)
    profiler = _profiler()
    profiler.start()
    MongoRestore().run(rctx)
    profiler.stop()
    path = out_dir / f"profile-restore-{docs}.txt"
    path.write_text(profiler.output_text(unicode=False, color=False))
    written["restore"] = str(path)
    shutil.rmtree(out, ignore_errors=True)
    say(f"profiles written: {', '.join(written.values())}")
    return written


def transform_cpu(setup: Setup, out_dir: Path) -> str:
    """A cProfile of ``mongo.transform`` on CPU time (not wall time), sorted by own time.

    On CPU time because the question for the transform is its client CPU per
    document: on FerretDB a wall-clock profile is mostly waiting for the server.
    Seeds ``transform_docs`` documents, runs the step once to import and warm
    everything (the recipe's registry), then profiles a second run.
    """
    import cProfile
    import io
    import pstats
    import time

    from harness import COLLECTION, dataset_file, seed
    from sections import SCRATCH

    from migration.steps.mongo.transform import MongoTransform

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    n = setup.transform_docs
    logs = setup.work / "profile-transform-logs"

    params = MongoTransform.Params(
        uri=setup.url(SCRATCH),
        collection=COLLECTION,
        function="migration.recipes.bank_details:split_swift_bic_iban",
        log_dir=str(logs),
    )

    def run() -> None:
        MongoTransform().run(StepContext(step_id="transform", params=params, workdir=logs))

    seed(setup.server, SCRATCH, dataset_file(n, setup.cache), COLLECTION)
    run()
    seed(setup.server, SCRATCH, dataset_file(n, setup.cache), COLLECTION)
    profiler = cProfile.Profile(time.process_time)
    profiler.runcall(run)
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(40)
    path = out_dir / f"profile-transform-cpu-{n}.txt"
    path.write_text(text.getvalue())
    shutil.rmtree(logs, ignore_errors=True)
    say(f"profile written: {path}")
    return str(path)


# The parts of the batch loop whose CPU time ``phases`` reports: (owner, method, label).
_PHASES = (
    ("transform_batches.RawReader", "take", "read (raw batches, decoded)"),
    ("transform_batches.BatchLoop", "_plan", "plan (the function, after-state, diff)"),
    ("record_log.InflightJournal", "save", "journal (fsynced)"),
    ("guarded_writes.GuardedWriter", "write", "write (guards, update commands, re-reads)"),
    ("transform_batches.BatchLoop", "_log_outcome", "record log (JSON lines) and counters"),
    ("record_log.RecordLog", "commit", "record log fsync"),
)


def transform_phases(url: str | None, docs: int, batch_size: int = 500, repeat: int = 3) -> str:
    """Client CPU per document of each part of ``mongo.transform``'s batch loop, in-process.

    Timers (``time.process_time``) wrap the loop's parts and ``gc.callbacks`` time the
    garbage collector; "other" is the rest of the step (connecting, counting, progress
    records). One warm-up run on 200 documents first (imports, the recipe's registry);
    then ``repeat`` runs of ``docs`` documents, each reseeded; medians.
    """
    import functools
    import gc
    import importlib
    import statistics
    import tempfile
    import time

    from harness import COLLECTION, dataset_file, open_server, seed

    from migration.log import configure_logging
    from migration.steps.mongo.transform import MongoTransform

    configure_logging("json", "warning")
    spent: dict[str, float] = {}
    collected = {"seconds": 0.0, "started": 0.0}

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            collected["started"] = time.process_time()
        else:
            collected["seconds"] += time.process_time() - collected["started"]

    def timed(function: Any, label: str) -> Any:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent[label] = spent.get(label, 0.0) + time.process_time() - started

        return wrapper

    for owner, method, label in _PHASES:
        module, name = owner.split(".")
        cls = getattr(importlib.import_module(f"migration.steps.mongo.{module}"), name)
        setattr(cls, method, timed(getattr(cls, method), label))
    gc.callbacks.append(on_gc)
    server = open_server(url)
    cache = Path(__file__).resolve().parent / ".cache"
    samples: dict[str, list[float]] = {}
    try:
        with tempfile.TemporaryDirectory() as logs:
            params = MongoTransform.Params(
                uri=server.database_url("bench_phases"),
                collection=COLLECTION,
                function="migration.recipes.bank_details:split_swift_bic_iban",
                log_dir=logs,
                batch_size=batch_size,
            )

            def run() -> None:
                MongoTransform().run(StepContext(step_id="transform", params=params, workdir=Path(logs)))

            seed(server, "bench_phases", dataset_file(200, cache), COLLECTION)
            run()
            for _ in range(repeat):
                seed(server, "bench_phases", dataset_file(docs, cache), COLLECTION)
                spent.clear()
                collected["seconds"] = 0.0
                started = time.process_time()
                run()
                total = time.process_time() - started
                parts = {**spent, "garbage collector (inside the parts above)": collected["seconds"]}
                parts["other (connect, count, progress)"] = total - sum(spent.values())
                parts["whole step"] = total
                for label, seconds in parts.items():
                    samples.setdefault(label, []).append(seconds / docs * 1e6)
    finally:
        gc.callbacks.remove(on_gc)
        server.stop()
    lines = [
        f"- command: `python bench/bench_profile.py --docs {docs} --batch-size {batch_size} --repeat {repeat}"
        + (f" --url {url}`" if url else "`"),
        f"- server: {server.kind}",
        "",
        "| part | client CPU µs/doc, median (min-max) |",
        "|---|---:|",
    ]
    for label, values in samples.items():
        lines.append(f"| {label} | {statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="client CPU per document of each part of mongo.transform")
    parser.add_argument("--url", default=None, help="server URL (default: a private FerretDB)")
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    options = parser.parse_args()
    print(transform_phases(options.url, options.docs, options.batch_size, options.repeat))
