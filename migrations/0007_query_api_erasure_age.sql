-- Monitoring (issue 21): the query API reports how long the oldest erasure has been
-- pending (erasures_oldest_pending_seconds, the ErasurePending alert of ops/rules/). It
-- needs the request time of pending erasures: a timestamp, never whom they erase.
GRANT SELECT (requested_at) ON erasures TO query_api;
