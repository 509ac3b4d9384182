#!/usr/bin/env python3
"""Peak RSS of backup and restore, four collections at once, at growing N: flat in N?

    python bench/wire_server.py --port 28000 --heap 8g &      # a server that holds 1M in memory
    python bench/memory_flat.py --url mongodb://127.0.0.1:28000/?directConnection=true \\
        --docs 10000,40000,250000

Each size is four collections of ``docs`` documents (so 40k, 160k and 1M in all),
backed up with ``parallel_collections`` 4, then restored from that backup with
``parallel_collections`` 4 and ``insertion_workers`` 2, each by ``bench/child.py`` as
its own process (its ``VmHWM``: the high-water mark of its resident memory). The
source is dropped before the restore, so the server holds one copy at a time.
``MALLOC_ARENA_MAX`` is passed through to the children when set.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (
    COLLECTION,
    PROJECT,
    dataset_file,
    drop_database,
    open_server,
    run_child,
    say,
    seed,
    workdir,
)

SOURCE, TARGET = "bench_mem_source", "bench_mem_target"
COLLECTIONS = 4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", default="10000,40000,250000", help="documents per collection, a,b,c")
    parser.add_argument("--url", default=None)
    parser.add_argument("--verify", default="checksums", help="mongo.restore's verify level")
    args = parser.parse_args()
    server = open_server(args.url)
    work = workdir()
    rows: list[str] = []
    try:
        floor = run_child("noop", url=server.database_url(SOURCE))
        rows.append(f"| floor: imports + one connection | | {floor['peak_rss_kb'] / 1024:.1f} | | |")
        for docs in [int(d) for d in args.docs.split(",")]:
            path = dataset_file(docs, PROJECT / "bench" / ".cache")
            drop_database(server, SOURCE)
            for k in range(COLLECTIONS):
                say(f"seeding {COLLECTION}_{k} with {docs:,} documents")
                seed(server, SOURCE, path, collection=f"{COLLECTION}_{k}")
            n = COLLECTIONS * docs
            out = work / f"b{docs}"
            say(f"backup of {n:,} documents")
            backup = run_child(
                "backup", url=server.database_url(SOURCE), out=str(out), keep=True, parallel_collections=4
            )
            drop_database(server, SOURCE)
            say(f"restore of {n:,} documents")
            restored = run_child(
                "restore",
                url=server.database_url(TARGET),
                parallel_collections=4,
                insertion_workers=2,
                verify=args.verify,
                **{"from": backup["path"]},
            )
            drop_database(server, TARGET)
            shutil.rmtree(out, ignore_errors=True)
            for what, result in (("backup", backup), (f"restore (verify: {args.verify})", restored)):
                if result["docs"] != n:
                    raise SystemExit(f"{what} moved {result['docs']:,} documents, not {n:,}")
                rows.append(
                    f"| {what} | {n:,} | {result['peak_rss_kb'] / 1024:.1f} | {result['seconds']:.1f} "
                    f"| {result['cpu_seconds'] / n * 1e6:.2f} |"
                )
        print(f"server: {server.kind}; {COLLECTIONS} collections at once; restore with 2 insertion workers\n")
        print("| what | documents | peak RSS MB | seconds | client CPU µs/doc |")
        print("|---|---:|---:|---:|---:|")
        print("\n".join(rows))
    finally:
        drop_database(server, SOURCE)
        drop_database(server, TARGET)
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
