-- Crypto-shredding (README, "Personal data and erasure"): one data key per student,
-- found by a keyed hash of the case-folded e-mail (schemas.personal.student_hash),
-- never by the address. Deleting a row makes every copy of that student's sealed
-- e-mail and name, in Kafka and anywhere else, unreadable.
CREATE TABLE student_keys (
    key_id        uuid PRIMARY KEY,
    student_hash  text NOT NULL UNIQUE,
    key           bytea NOT NULL CHECK (length(key) = 32),
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Erasure requests: written (pending) before POST /erasures answers 202, so an
-- accepted erasure survives any crash; the command API's erasure worker deletes the
-- key and marks the request done in one transaction. The student hash is cleared
-- then: a done erasure keeps no trace of whom it erased.
CREATE TABLE erasures (
    erasure_id    uuid PRIMARY KEY,
    student_hash  text,
    status        text NOT NULL CHECK (status IN ('pending', 'done')),
    requested_at  timestamptz NOT NULL DEFAULT now(),
    completed_at  timestamptz,
    CHECK ((status = 'pending') = (student_hash IS NOT NULL)),
    CHECK ((status = 'done') = (completed_at IS NOT NULL))
);
CREATE INDEX erasures_pending ON erasures (requested_at) WHERE status = 'pending';
