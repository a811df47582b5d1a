-- A replay in progress (projections/replay.py): one row per projection while it runs,
-- its heartbeat refreshed every second, deleted when it ends. A replay killed with
-- kill -9 leaves its row behind with a heartbeat that stops: readers count a replay as
-- running only while the heartbeat is recent. The projector's and the query API's
-- /metrics read it (replay_running, replay_progress_ratio).
CREATE TABLE replay_runs (
    projection    text PRIMARY KEY,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    workers       integer NOT NULL,
    done          bigint NOT NULL DEFAULT 0,  -- offsets in the shadow copies
    total         bigint NOT NULL DEFAULT 0   -- offsets to read up to the end of the log
);

-- Records a replay's workers could not decode, written in the transaction of the batch
-- that read them: at the swap, those past the live projector's positions go to the
-- dead-letter topic (the live projector never reads them). Dropped with the shadow
-- copies; rare, so the bytes are kept.
CREATE TABLE replay_failures (
    projection  text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    key         bytea,
    value       bytea,
    reason      text NOT NULL,
    PRIMARY KEY (projection, partition, "offset")
);

-- Written by the replay (the schema's owner); the projector's and the query API's
-- /metrics read whether one runs (migration 0005 made the roles).
GRANT SELECT ON replay_runs TO projector, query_api;
