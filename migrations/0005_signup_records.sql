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

-- One row per sealed sign-up: the key reference its records carry (their `key_id`
-- field) -> the student's key. A fresh random id per sign-up, so the log does not link
-- one student's sign-ups to each other; the rows go with the key (ON DELETE CASCADE),
-- and after an erasure the references in the log point nowhere.
CREATE TABLE signup_keys (
    key_ref       uuid PRIMARY KEY,
    key_id        uuid NOT NULL REFERENCES student_keys (key_id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signup_keys_key ON signup_keys (key_id);
