"""SIGINT/SIGTERM and step timeouts: where the runner may be interrupted, and where not.

A signal sets the stop flag (long steps poll it and stop at a safe point). Inside
an interruptible section (a step's ``run``, a retry's wait) it also raises
:class:`Interrupted` at once; while the state is being written it never does.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any

import structlog

from migration.errors import Interrupted, MigrationError
from migration.steps.base import StopFlag

log = structlog.get_logger("migration")


class StepTimeout(MigrationError):
    pass


class Interrupts:
    """The stop flag and the sections in which a signal (or a timeout) may raise."""

    def __init__(self) -> None:
        self.stop_flag = StopFlag()
        self._interruptible = False

    def disarm(self) -> None:
        self._interruptible = False

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Handle SIGINT/SIGTERM for the duration of a run."""

        def handler(signum: int, frame: Any) -> None:
            name = signal.Signals(signum).name
            first = not self.stop_flag.is_set()
            self.stop_flag.set(name)
            if first:
                log.warning("stopping", signal=name, hint="the run will stop at a safe point; resumable")
            if self._interruptible:
                self._interruptible = False
                raise Interrupted(f"interrupted by {name}")

        old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)

    @contextlib.contextmanager
    def section(self, timeout: float | None) -> Iterator[None]:
        """Code a signal interrupts at once (and ``timeout`` seconds end with StepTimeout)."""

        def on_alarm(signum: int, frame: Any) -> None:
            if self._interruptible:
                self._interruptible = False
                raise StepTimeout(f"timed out after {timeout:g}s")

        old_alarm = None
        if timeout:
            old_alarm = signal.signal(signal.SIGALRM, on_alarm)
            signal.setitimer(signal.ITIMER_REAL, timeout)
        if self.stop_flag.is_set():
            raise Interrupted(f"interrupted by {self.stop_flag.signal_name}")
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False
            if timeout:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old_alarm or signal.SIG_DFL)

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        """No Interrupted is raised while the state is being written."""
        was = self._interruptible
        self._interruptible = False
        try:
            yield
        finally:
            self._interruptible = was
        if was and self.stop_flag.is_set():
            raise Interrupted(f"interrupted by {self.stop_flag.signal_name}")
