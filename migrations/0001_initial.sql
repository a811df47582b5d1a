-- Read side: the decision per sign-up, and per-course and global age aggregates.
-- Birth dates are aggregated, never ages, so answers stay right as time passes.

CREATE TABLE signup_decisions (
    signup_id   text PRIMARY KEY,          -- GET /signups/{id}: one index probe
    course_id   text NOT NULL,
    status      text NOT NULL CHECK (status IN ('accepted', 'rejected')),
    reason      text,
    event_id    text NOT NULL,
    decided_at  timestamptz NOT NULL
);

CREATE TABLE course_stats (
    course_id     text PRIMARY KEY,        -- GET /courses/{id}/stats: one index probe
    title         text,
    lecturer      text,
    capacity      integer,
    enrolled      integer NOT NULL DEFAULT 0,
    dob_sum_days  bigint  NOT NULL DEFAULT 0,  -- sum of birth dates as proleptic ordinals
    dob_min       date,
    dob_max       date,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A single row: GET /stats reads it without scanning courses or enrollments.
CREATE TABLE global_stats (
    id            boolean PRIMARY KEY DEFAULT true CHECK (id),
    courses       integer NOT NULL DEFAULT 0,
    enrollments   bigint  NOT NULL DEFAULT 0,
    dob_sum_days  bigint  NOT NULL DEFAULT 0,
    dob_min       date,
    dob_max       date,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
INSERT INTO global_stats (id) VALUES (true);

-- Consumed positions, written in the same transaction as the view changes they produced.
CREATE TABLE projection_offsets (
    projection  text    NOT NULL,
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (projection, topic, partition)
);

-- Notifier: what was sent (by decision event id) and what it knows of courses.
CREATE TABLE sent_notifications (
    event_id    text PRIMARY KEY,
    signup_id   text NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifier_courses (
    course_id   text PRIMARY KEY,
    title       text NOT NULL,
    lecturer    text NOT NULL
);
