-- Sign-up requests with an Idempotency-Key (README, "The flow of a sign-up"): the
-- command API records each before it produces the command and marks it produced
-- after Kafka acknowledged, so a retry, however late, never becomes a second command
-- with a second decision. The id and the fingerprint are HMACs under the student's own
-- key, and the row goes with the key (ON DELETE CASCADE): after an erasure nothing
-- here links to anyone.
CREATE TABLE signup_requests (
    signup_id     uuid PRIMARY KEY,
    key_id        uuid NOT NULL REFERENCES student_keys (key_id) ON DELETE CASCADE,
    fingerprint   text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    lease_until   timestamptz NOT NULL,
    produced_at   timestamptz
);
CREATE INDEX signup_requests_key ON signup_requests (key_id);
