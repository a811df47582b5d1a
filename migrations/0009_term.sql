-- A registration term (issue 20): waiting lists, withdrawals and course changes.

-- A sign-up's status now follows its lifecycle: accepted | waitlisted | rejected first,
-- then accepted (promoted) or withdrawn. `ticket` orders a course's waiting list: the
-- Kafka offset of the StudentWaitlisted record, which grows along the course's one
-- partition in the order the processor queued the students (first come, first served).
ALTER TABLE signup_decisions DROP CONSTRAINT signup_decisions_status_check;
ALTER TABLE signup_decisions ADD CONSTRAINT signup_decisions_status_check
    CHECK (status IN ('accepted', 'rejected', 'waitlisted', 'withdrawn'));
ALTER TABLE signup_decisions ADD COLUMN ticket bigint;
-- GET /signups/{id} of a waiting student: its position is one more than the waiting
-- entries of its course with a lower ticket, an index range as long as the waiting list
-- ahead of it (at most waitlist_capacity), never a scan of the course's sign-ups.
CREATE INDEX signup_decisions_waiting ON signup_decisions (course_id, ticket)
    WHERE status = 'waitlisted';

ALTER TABLE course_stats ADD COLUMN waitlist_capacity integer NOT NULL DEFAULT 0;
ALTER TABLE course_stats ADD COLUMN waitlisted integer NOT NULL DEFAULT 0;

-- The notifier's way to a student who is no longer in the event that concerns them: a
-- promotion, a withdrawal or a rejected withdrawal carry the sign-up id only. Sealed
-- as in the decision events (schemas.personal): erasing the student deletes the key, and
-- these bytes can no longer be read, here as in Kafka. Decisions written before sealing
-- (address in clear) get no row: nothing in clear is kept.
CREATE TABLE notifier_contacts (
    signup_id     text PRIMARY KEY,
    course_id     text NOT NULL,
    key_id        text,
    email_sealed  bytea,
    name_sealed   bytea
);

-- The notifier keeps and reads its contacts (migrations/0005_service_roles.sql gives each
-- service only what its code runs). The views' new columns are covered by the view
-- grants, which every replay swap renews (grant_view_privileges).
GRANT SELECT, INSERT ON notifier_contacts TO notifier;
