"""Logging: structlog configured once; console on a terminal, JSON lines otherwise.

Everything goes to stderr (stdout is for machine-readable output). Every event
passes through the run's :class:`Redactor`, so secrets never reach a log line.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from migration.secrets import Redactor

_redactor = Redactor()


def redactor() -> Redactor:
    """The process-wide redactor the log pipeline masks with."""
    return _redactor


def _redact(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    return {k: _redactor(v) for k, v in event.items()}


def resolve_format(fmt: str) -> str:
    if fmt == "auto":
        try:
            return "console" if sys.stderr.isatty() else "json"
        except (ValueError, OSError):
            return "json"
    return fmt


def configure_logging(fmt: str = "auto", level: str = "info") -> str:
    """Configure structlog (and stdlib loggers such as pymongo's) once at start-up."""
    fmt = resolve_format(fmt)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    else:
        renderer = structlog.processors.JSONRenderer(default=str)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(processor=renderer, foreign_pre_chain=shared))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    return fmt
