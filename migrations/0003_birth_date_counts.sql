-- The age distribution (issue 11): how many accepted sign-ups were born on each date,
-- per course and over every course. Ages at any as_of follow from these counts (see
-- projections/stats.py: age_histogram), so nothing needs touching as time passes, and
-- a request reads at most one row per distinct birth date, never the enrollments.
-- Filled by the projector from here on; `make replay` fills them from the whole log.

-- COLLATE "C": the key compares bytes, not the database locale's rules, which makes the
-- per-batch upserts into its index cheaper (a replay writes about one row per accepted
-- sign-up here); course ids are ASCII, so the order is the same.
CREATE TABLE course_birth_dates (
    course_id  text    COLLATE "C" NOT NULL,
    dob        date    NOT NULL,
    n          integer NOT NULL,
    PRIMARY KEY (course_id, dob)     -- one course's counts: one index range
);

CREATE TABLE global_birth_dates (
    dob        date    PRIMARY KEY,
    n          bigint  NOT NULL
);
