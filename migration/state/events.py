"""The events log: one JSON line per transition, for audit (``<run-id>.events.jsonl``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Any

import structlog

from migration.secrets import Redactor


class EventLog:
    """Audit trail: one JSON line per transition, rendered by structlog."""

    def __init__(self, path: Path, redact: Redactor) -> None:
        self.path = path
        self._redact = redact
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8")
        self._log = structlog.wrap_logger(
            structlog.WriteLogger(self._file),
            processors=[
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(default=str),
            ],
        )

    def emit(self, event: str, **fields: Any) -> None:
        self._log.msg(event, **self._redact(fields))

    def close(self) -> None:
        self._file.close()
