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
