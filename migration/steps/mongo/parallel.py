"""Work on several collections (or batches) at once, as mongodump and mongorestore do.

Threads, not processes: pymongo releases the GIL while it waits on the server, and
hashing and file writes release it too, so a few threads keep the server busy
while one core does the Python. Every queue is bounded, so memory does not grow
with the size of the data.

The first failure wins: the other workers stop at their next batch (they see the
cancel flag through :meth:`Workers.check`) and the failure is re-raised in the
caller, with what it was (an ``Interrupted``, a ``PyMongoError``, a test's
simulated kill) unchanged.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

# mongodump --numParallelCollections and mongorestore --numParallelCollections default to 4.
DEFAULT_PARALLEL_COLLECTIONS = 4


class Cancelled(Exception):
    """Raised inside a worker because another worker failed: never reaches the caller."""


class Workers:
    """A cancel flag shared by the workers of one call, and a lock for shared tallies."""

    def __init__(self, check_stop: Callable[[], None]) -> None:
        self._check_stop = check_stop
        self._cancelled = threading.Event()
        self.lock = threading.Lock()

    def cancel(self) -> None:
        self._cancelled.set()

    def check(self) -> None:
        """Between units of work: stop if another worker failed, or SIGINT/SIGTERM came."""
        if self._cancelled.is_set():
            raise Cancelled
        self._check_stop()

    def locked(self, advance: Callable[[int], None]) -> Callable[[int], None]:
        """``advance`` made safe to call from several threads (progress bars are not)."""

        def call(n: int) -> None:
            with self.lock:
                advance(n)

        return call


def run_each(
    items: Iterable[T],
    work: Callable[[T, Workers], R],
    workers: int,
    check_stop: Callable[[], None],
) -> list[R]:
    """``work(item, workers)`` for every item, ``workers`` at a time; results in item order.

    With one worker everything runs in the calling thread, in order, as a plain loop.
    """
    chosen = list(items)
    shared = Workers(check_stop)
    if workers <= 1 or len(chosen) <= 1:
        results = []
        for item in chosen:
            shared.check()
            results.append(work(item, shared))
        return results
    with ThreadPoolExecutor(max_workers=min(workers, len(chosen))) as pool:
        futures: list[Future[R]] = []
        for item in chosen:
            futures.append(pool.submit(_guarded, work, item, shared))
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            shared.cancel()
            wait(futures)
            _raise_first(futures)
    return [future.result() for future in futures]


def _guarded(work: Callable[[T, Workers], R], item: T, shared: Workers) -> R:
    try:
        return work(item, shared)
    except BaseException:
        shared.cancel()
        raise


def _raise_first(futures: list[Future[R]]) -> None:
    """Re-raise the first real failure (in item order), not a worker's Cancelled."""
    errors = [f.exception() for f in futures if f.exception() is not None]
    real = [e for e in errors if not isinstance(e, Cancelled)]
    raise (real or errors)[0]  # type: ignore[misc]


def consume(
    batches: Iterator[T],
    work: Callable[[T], None],
    workers: int,
    shared: Workers,
) -> None:
    """``work(batch)`` for every batch, by ``workers`` threads fed through a bounded queue.

    The calling thread reads ``batches`` (reading stops when the queue is full, so
    at most ``2 * workers`` batches are in memory); order between batches is not kept.
    """
    if workers <= 1:
        for batch in batches:
            shared.check()
            work(batch)
        return
    pending: queue.Queue[T | None] = queue.Queue(maxsize=2 * workers)
    failures: list[BaseException] = []

    def drain() -> None:
        while True:
            batch = pending.get()
            if batch is None:
                return
            if failures:
                continue  # keep draining so the reader never blocks on a full queue
            try:
                shared.check()
                work(batch)
            except BaseException as exc:
                failures.append(exc)
                shared.cancel()

    threads = [threading.Thread(target=drain, daemon=True) for _ in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for batch in batches:
            if failures:
                break
            pending.put(batch)
    finally:
        for _ in threads:
            pending.put(None)
        for thread in threads:
            thread.join()
    if failures:
        real = [e for e in failures if not isinstance(e, Cancelled)]
        raise (real or failures)[0]
