"""migration: run production database migrations as checkpointed, resumable plans."""

__version__ = "0.1.0"
