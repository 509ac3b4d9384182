"""The store protocol lives in :mod:`migration.state.backend`; re-exported for the store's readers."""

from migration.state.backend import EventSink, LockView, RunDocument, StateBackend, StepDocument

__all__ = ["EventSink", "LockView", "RunDocument", "StateBackend", "StepDocument"]
