"""Starts the native development stack: Kafka (KRaft), PostgreSQL, an SMTP sink, the services.

Nothing in the product imports this package; it is how `make up` and the test
fixtures bring real dependencies up without Docker.
"""
