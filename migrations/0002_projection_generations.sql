-- Replay rebuilds the read-side tables into shadow copies and swaps them in by renaming,
-- all in one transaction (projections/replay.py). This row is the barrier between that
-- swap and the live projector: every projector batch transaction starts by reading it
-- FOR SHARE, and the swap bumps it first, so a swap waits for the batch in flight and
-- the next batch sees the new generation, rolls back and seeks to the swapped-in offsets.
CREATE TABLE projection_generations (
    projection  text PRIMARY KEY,
    generation  bigint NOT NULL DEFAULT 0,
    swapped_at  timestamptz
);
INSERT INTO projection_generations (projection) VALUES ('views');
