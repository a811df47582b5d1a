"""Starts the native development stack: Kafka (KRaft), PostgreSQL, an SMTP sink, the services.

It is how `make up`, the benchmarks, the chaos suite and (where no Docker engine answers)
the test fixtures bring real dependencies up, and how `make replay` finds the native
stack's addresses (`python -m stack replay`). The services never import it.
"""
