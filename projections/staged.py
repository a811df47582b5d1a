"""A replay's batch: records of the event log turned into rows for PostgreSQL's COPY, pure.

The replay's counterpart of `projections.batch.build`, for millions of records: the
fields come from `projections.fields` (only those a view reads, timestamps and dates as
epoch integers), and a decision becomes a plain tuple ready for a binary COPY. What
`build` folds in Python (new decisions, per-course deltas, birth-date counts), the
replay's statement folds in PostgreSQL (`projections.store.shadow.apply_staged`), on
the other core. The same records give the same views either way: the integration tests
compare a replay with the live projector's views row for row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from projections import fields
from projections.batch import CourseRow, EventRecord, UnreadableRecord

# A term's events (issue 20) move sign-ups already decided and read their course's
# figures back: they are folded as the live projector folds them (`projections.batch.
# build`, `store.apply`), in log order, after the batch's other events, in the same
# transaction. The live projector's own batches apply in that order too (courses, then
# decisions, then the term's changes), and a term's event only ever moves a sign-up
# decided before it in the log.
LIVE_FOLD = frozenset({"StudentWaitlisted", "StudentPromoted", "StudentWithdrew",
                       "CourseChanged"})

# (signup_id, course_id, reason (None: accepted), event_id, occurred_at in epoch ms,
#  date_of_birth in epoch days (None: rejected), partition of the event log)
Decision = tuple[str, str, str | None, str, int, int | None, int]


@dataclass(frozen=True)
class Staged:
    courses: tuple[CourseRow, ...] = ()  # the first CourseCreated per course id
    decisions: list[Decision] = field(default_factory=list)  # the first per sign-up id
    failures: tuple[UnreadableRecord, ...] = ()
    next_offsets: dict[int, int] = field(default_factory=dict)
    # The batch's LIVE_FOLD events, in log order, for the live fold (None: there are none).
    live: tuple[EventRecord, ...] | None = None


def stage(records: Iterable[tuple[int, int, bytes | None, bytes | None]]) -> Staged:
    """Records as (partition, offset, key, value), in offset order per partition: plain
    tuples, since a replay makes one per record."""
    courses: dict[str, CourseRow] = {}
    decisions: list[Decision] = []
    seen: set[str] = set()
    failures: list[UnreadableRecord] = []
    next_offsets: dict[int, int] = {}
    live: list[EventRecord] = []
    for partition, offset, key, value in records:
        next_offsets[partition] = offset + 1
        if value is None:
            failures.append(UnreadableRecord(EventRecord(partition, offset, key, value),
                                             "empty record (tombstone)"))
            continue
        try:
            name, values = fields.read(value)
        except fields.Unreadable as exc:
            failures.append(UnreadableRecord(EventRecord(partition, offset, key, value),
                                             str(exc)))
            continue
        if name in LIVE_FOLD:
            live.append(EventRecord(partition, offset, key, value))
            continue
        if values is None:
            continue
        if name == "StudentSignedUp":
            signup_id, course_id, event_id, at, dob = values
            reason = None
        elif name == "SignUpRejected":
            signup_id, course_id, event_id, at, reason = values
            dob = None
        else:  # CourseCreated
            if values[0] not in courses:
                courses[values[0]] = CourseRow(*values)
            continue
        # A decision repeated after a processor crash has the same sign-up id: the first
        # one stands, in the batch as in the table (its primary key).
        if signup_id not in seen:
            seen.add(signup_id)
            decisions.append((signup_id, course_id, reason, event_id, at, dob, partition))
    return Staged(tuple(courses.values()), decisions, tuple(failures), next_offsets,
                  tuple(live) if live else None)
