"""A stand-in for the VNP Dashboard backend: its database, seeded, and a tiny HTTP app.

- :mod:`migration.demo.dataset`: generates a realistic VNP database (users,
  portfolios, properties, their bank details with a messy ``swift_bic_iban``
  field, tenants, leases, ...), deterministic for a seed, any size, and knows
  the ``swift_bic_iban`` distribution it generated (``expected_distribution``).
- :mod:`migration.demo.seed`: ``seed(uri, size, seed, drop)`` writes it in
  batches; ``python -m migration.demo.seed --uri URI [--size small|N]``.
- :mod:`migration.demo.app`: ``python -m migration.demo.app --uri URI --port N``,
  the "new code" that expects the migrated schema (the smoke test's target).
"""
