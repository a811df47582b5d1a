"""Starts the native development stack: Kafka (KRaft), PostgreSQL, an SMTP sink, the services.

It is how `make up`, the benchmarks, the chaos suite and (where no Docker engine answers)
the test fixtures bring real dependencies up. The services never import it; `make replay`
(projections/replay.py) asks it for the native stack's addresses when it runs outside
the services' environment.
"""
