-- The age distribution (issue 11): how many accepted sign-ups were born on each date,
-- per course and over every course. Ages at any as_of follow from these counts (see
-- projections/stats.py: age_histogram), so nothing needs touching as time passes, and
-- a request reads at most one row per distinct birth date, never the enrollments.
-- Filled by the projector from here on; `make replay` fills them from the whole log.

CREATE TABLE course_birth_dates (
    course_id  text    NOT NULL,
    dob        date    NOT NULL,
    n          integer NOT NULL,
    PRIMARY KEY (course_id, dob)     -- one course's counts: one index range
);

CREATE TABLE global_birth_dates (
    dob        date    PRIMARY KEY,
    n          bigint  NOT NULL
);
