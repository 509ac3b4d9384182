"""The lease of a plan in MongoDB: a fencing token, not a lock.

Each holder owns one *epoch*: the holder of epoch N is whoever inserted the
document ``{_id: "<scope>|N"}`` into ``<prefix>leases``. Inserting an ``_id``
that exists fails with 11000 on every server, so taking an epoch is atomic even
on FerretDB 1.24, whose ``findAndModify`` queries then replaces (five processes
taking over one expired lease through it gave more than one winner in 20 of 20
trials).

- Acquire: read the highest epoch; if it is held and not expired, fail naming its
  holder; else insert epoch N+1 (11000: another process won). Taking over an
  expired epoch, re-read it after the insert: if its holder renewed it in
  between, it is alive, and the new epoch is given back.
- Expiry: now > last renewal + length, on the server's clock, with no grace.
- Renewal (every length/3, in a thread): stamp ``renewed_at`` with the server's
  clock, then check that epoch N+1 does not exist; if it does, the lease is lost.
- Fencing: every state write is conditional on the writer's epoch (the run
  document and the ``current`` pointer carry the epoch of their last writer), and
  :meth:`Lease.ensure` runs before and after each write: it costs nothing while
  the last confirmed renewal is recent on this host's clock, and renews (which
  detects a takeover) otherwise. So a holder that was paused or cut off past its
  expiry stops at its next write without writing.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import DuplicateKeyError

from migration.errors import LockedError, StateError
from migration.state.host import operator_name
from migration.store_mongo.connection import Connection
from migration.store_mongo.errors import LeaseLost

log = structlog.get_logger()

# A write needs no round trip to the server while the last confirmed renewal is
# younger than this share of the lease (renewals come every third of it).
FRESH_SHARE = 2 / 3
# Epochs kept per scope for the record; older ones are deleted on acquire.
KEEP_EPOCHS = 100


def _clock() -> float:
    """Seconds on a clock that keeps counting while the machine sleeps (a laptop lid)."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    return time.clock_gettime(boottime) if boottime is not None else time.monotonic()


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


class Lease:
    """The lease of one scope (a plan, or a plan and its target) held by this process."""

    def __init__(
        self,
        conn: Connection,
        scope: str,
        *,
        seconds: float,
        host: str,
        on_lost: Callable[[LeaseLost], None] | None = None,
    ) -> None:
        self.conn = conn
        self.scope = scope
        self.seconds = seconds
        self.host = host
        self.on_lost = on_lost
        self.token = secrets.token_hex(8)
        self.epoch: int | None = None
        self.run_id: str | None = None
        self.previous_owner: dict[str, Any] | None = None
        self.lost: LeaseLost | None = None
        self._confirmed = 0.0  # _clock() just before sending the last renewal the server confirmed
        self._mutex = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> str:
        return f"{self.conn.shown} {self.conn.prefix}leases {self.scope}"

    def _id(self, epoch: int) -> str:
        return f"{self.scope}|{epoch}"

    @property
    def _leases(self) -> Any:
        return self.conn.collection("leases")

    def _latest(self) -> dict[str, Any] | None:
        with self.conn.errors("reading the lease"):
            found = list(self._leases.find({"scope": self.scope}).sort("epoch", -1).limit(1))
        return found[0] if found else None

    def _expiry(self, doc: dict[str, Any]) -> datetime:
        return doc["renewed_at"] + timedelta(seconds=float(doc.get("seconds") or self.seconds))

    # -- taking it ----------------------------------------------------------------------
    def acquire(self) -> None:
        """Take the next epoch, or raise LockedError naming the live holder."""
        self.previous_owner, self.lost, self.run_id = None, None, None
        now = self.conn.server_now()
        latest = self._latest()
        previous: dict[str, Any] | None = None
        epoch = 1
        if latest is not None:
            if not latest.get("released"):
                if now <= self._expiry(latest):
                    raise LockedError(self._held_message(latest))
                previous = latest
            epoch = int(latest["epoch"]) + 1
        sent = _clock()
        mine = {
            "_id": self._id(epoch),
            "scope": self.scope,
            "epoch": epoch,
            "token": self.token,
            "host": self.host,
            "pid": os.getpid(),
            "user": operator_name(),
            "run_id": None,
            "since": now,
            "renewed_at": now,
            "seconds": self.seconds,
            "released": False,
        }
        try:
            with self.conn.errors("taking the lease"):
                self._leases.insert_one(mine)
        except StateError as exc:
            if isinstance(exc.__cause__, DuplicateKeyError):
                raise LockedError(self._held_message(self._find(epoch))) from None
            raise
        if previous is not None:
            again = self._find(int(previous["epoch"]))
            if (
                again is not None
                and not again.get("released")
                and again["renewed_at"] != previous["renewed_at"]
            ):
                # Its holder renewed between our read and our insert: it is alive.
                with contextlib.suppress(StateError), self.conn.errors("giving the lease back"):
                    self._leases.delete_one({"_id": mine["_id"], "token": self.token})
                raise LockedError(self._held_message(again))
            self.previous_owner = {
                "host": previous.get("host"),
                "pid": previous.get("pid"),
                "run_id": previous.get("run_id"),
                "user": previous.get("user"),
                "since": _iso(previous.get("since")),
                "expired_at": _iso(self._expiry(previous)),
                "epoch": previous.get("epoch"),
            }
        self.epoch = epoch
        self._confirmed = sent
        self._prune(epoch)
        self._start_renewing()

    def _find(self, epoch: int) -> dict[str, Any] | None:
        with self.conn.errors("reading the lease"):
            return self._leases.find_one({"_id": self._id(epoch)})

    def _prune(self, epoch: int) -> None:
        if epoch % 10 == 0 and epoch > KEEP_EPOCHS:
            with contextlib.suppress(StateError), self.conn.errors("pruning old leases"):
                self._leases.delete_many({"scope": self.scope, "epoch": {"$lt": epoch - KEEP_EPOCHS}})

    def _held_message(self, holder: dict[str, Any] | None) -> str:
        if holder is None:
            return (
                f"plan {self.scope} was taken by another process at the same moment; "
                "run `migration status` to see who holds it"
            )
        expires = _iso(self._expiry(holder))
        return (
            f"plan {self.scope} is locked by a live run on host {holder.get('host')} "
            f"(pid {holder.get('pid')}, run {holder.get('run_id') or 'not started yet'}, "
            f"since {_iso(holder.get('since'))}; its lease expires at {expires} unless renewed); "
            f"wait for it to finish, or stop that process: another host takes over "
            f"{self.seconds:g} s after it stops renewing"
        )

    def takeover_message(self) -> str | None:
        """Whose expired lease this process took over, or None."""
        p = self.previous_owner
        if not p:
            return None
        return (
            f"took over the lease of run {p.get('run_id') or '(none)'} from host {p.get('host')} "
            f"(pid {p.get('pid')}, holder since {p.get('since')}), which expired at {p.get('expired_at')}"
        )

    # -- keeping it ---------------------------------------------------------------------
    def renew(self) -> None:
        """Renew now; LeaseLost if another process took over (this process must stop writing)."""
        with self._mutex:
            if self.lost is not None:
                raise self.lost
            if self.epoch is None:
                raise StateError("the lease is not held: acquire it before writing state")
            sent = _clock()
            if self.conn.local_clock:
                stamp: dict[str, Any] = {"$set": {"renewed_at": self.conn.server_now()}}
            else:
                stamp = {"$currentDate": {"renewed_at": True}}
            with self.conn.errors("renewing the lease"):
                result = self._leases.update_one(
                    {"_id": self._id(self.epoch), "token": self.token, "released": False}, stamp
                )
                successor = self._find(self.epoch + 1)
            if result.matched_count == 0 or successor is not None:
                self.lost = self._lost_to(successor)
                self._stop.set()
                raise self.lost
            self._confirmed = sent

    def ensure(self) -> None:
        """Raise LeaseLost unless this process certainly holds the lease at this moment."""
        if self.lost is not None:
            raise self.lost
        if self.epoch is None:
            raise StateError("the lease is not held: acquire it before writing state")
        if _clock() - self._confirmed < self.seconds * FRESH_SHARE:
            return
        self.renew()

    def fenced(self) -> LeaseLost:
        """A conditional write found a newer epoch: the lease is lost."""
        if self.lost is None:
            self.lost = self._lost_to(self._latest())
            self._stop.set()
        return self.lost

    def _lost_to(self, successor: dict[str, Any] | None) -> LeaseLost:
        who = (
            f"host {successor.get('host')} (pid {successor.get('pid')}) took it over at "
            f"{_iso(successor.get('since'))}"
            if successor is not None and successor.get("token") != self.token
            else "another process took it over"
        )
        return LeaseLost(
            f"lost the lease of plan {self.scope}: {who} after this process's lease expired "
            f"(it was paused or cut off for more than {self.seconds:g} s); stopping without writing "
            "anything more. The run is now in the hands of the new holder: see `migration status`"
        )

    def set_run(self, run_id: str) -> None:
        """Name the run this lease is for (shown to anyone the lease refuses)."""
        if self.epoch is None or self.run_id == run_id:
            return
        with self.conn.errors("naming the run in the lease"):
            self._leases.update_one(
                {"_id": self._id(self.epoch), "token": self.token}, {"$set": {"run_id": run_id}}
            )
        self.run_id = run_id

    def _start_renewing(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._renew_loop, name="migration-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                self.renew()
            except LeaseLost as lost:
                log.error(str(lost))
                if self.on_lost is not None:
                    self.on_lost(lost)
                return
            except StateError as exc:  # the server is unreachable: keep trying; writes check
                log.warning("lease renewal failed; retrying", error=str(exc))

    # -- giving it back -----------------------------------------------------------------
    def release(self) -> None:
        """Stop renewing and mark the epoch released (the next run need not wait for expiry)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None
        if self.epoch is not None and self.lost is None:
            try:
                with self.conn.errors("releasing the lease"):
                    self._leases.update_one(
                        {"_id": self._id(self.epoch), "token": self.token},
                        {"$set": {"released": True, "released_at": self.conn.server_now()}},
                    )
            except StateError as exc:
                log.warning("could not release the lease; it expires by itself", error=str(exc))
        self.epoch = None

    def stop_renewing(self) -> None:
        """Stop the renewal thread but keep the epoch (tests: a holder that stops answering)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._thread = None

    def is_held(self) -> bool | None:
        """Whether a live process holds the lease now (read-only)."""
        try:
            latest = self._latest()
            if latest is None or latest.get("released"):
                return False
            return self.conn.server_now() <= self._expiry(latest)
        except StateError:
            return None
