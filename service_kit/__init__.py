"""What every service of this project needs the same way, written once.

`logs` (one JSON line format), `records` (Kafka headers and a consumed record),
`deadletter` (one header format, one acknowledged producer), `http` (correlation ids,
request metrics and access lines of the APIs), `health` (the workers' /healthz, /readyz
and /metrics), `metrics` (a registry per instance, one set of latency buckets),
`backoff` (capped, jittered), `postgres` (the migrations at start-up, waiting for the
database) and `settings`.

Services never import each other; they import this package, as they import `schemas`.
"""
