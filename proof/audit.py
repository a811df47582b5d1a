"""The chaos suite's invariant audit: the guarantees below, checked after a scenario
against the event log, the views and the e-mails the SMTP sink stored.

Pure (no I/O), each over decoded events:
- `audit_decisions`: every sign-up that got a 202 has exactly one distinct decision in the
  log (a repeat of the same event_id is allowed and counted); no course holds more seats
  than its capacity; a student holds at most one seat per course; a course fills up to
  min(capacity, distinct students), and its seat numbers run 1..n.
- `expected_views`: what the projection must hold, recomputed from the log with
  `projections.stats` (the first decision per sign-up counts, as in the projector).
- `compare_views`: the differences between two sets of views.
- `audit_mails`: one e-mail per decision, with a bounded number of duplicates.

Adapters: `read_log` reads a whole topic with isolation.level=read_committed from the
first offset to the end offsets taken at the start; `read_views` reads the live views
(or a replay's shadow copies) of some courses; `replay_views` rebuilds every view from
the first event into the shadow copies, without swapping them in; `MailIndex` reads the
X-Event-Id and X-Signup-Id headers of the sink's .eml files.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from pathlib import Path
from typing import get_args

import psycopg
from confluent_kafka import Consumer, TopicPartition
from psycopg import sql

from projections.stats import AgeAggregate
from schemas import topics
from schemas.addresses import same_student_form
from schemas.codec import DecodeError, Message, decode
from schemas.messages import (
    CourseChanged,
    CourseCreated,
    Event,
    SignupDecision,
    SignUpRejected,
    StudentPromoted,
    StudentSignedUp,
    StudentWaitlisted,
    StudentWithdrew,
)
from service_kit.kafka_auth import client_config

Decision = SignupDecision  # every first decision: accepted, waitlisted or rejected
# Events that make a course a term's (waiting list, withdrawals, changes): its seats then
# come and go, and `proof.term_audit` checks them at every prefix of the log instead of
# the "accepted = min(capacity, students)" of a course that only fills up.
TERM_EVENTS = (StudentWaitlisted, StudentWithdrew, StudentPromoted, CourseChanged)

_MAX_EXAMPLES = 5


def student_key(email: str) -> str:
    """One student per e-mail address, by the system's one rule for comparing them."""
    return same_student_form(email)


def student_in_course(decision: Decision) -> str:
    """Who a decision is about, within its course: the seat key of a sealed decision
    (the address is unreadable here, by design), else the clear address. Both are one
    per student and course; a course whose decisions mix the two (sign-ups from before
    and after the encryption) would count a student who signed up both ways twice."""
    return decision.seat_key or student_key(decision.email)


def _examples(items: Iterable[object]) -> str:
    items = list(items)
    shown = ", ".join(str(i) for i in items[:_MAX_EXAMPLES])
    return shown + (f" (+{len(items) - _MAX_EXAMPLES} more)" if len(items) > _MAX_EXAMPLES else "")


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True)
class CourseAudit:
    course_id: str
    capacity: int | None  # None: no CourseCreated in the log
    accepted: int  # distinct sign-up ids with StudentSignedUp
    students: int  # distinct students (case-insensitive e-mail) among the decided sign-ups
    rejected: dict[str, int] = field(default_factory=dict)  # by reason


@dataclass(frozen=True)
class DecisionAudit:
    signups: int  # sign-ups that got a 202
    decided: int  # of those, how many have a decision in the log
    decisions: int  # distinct decisions in the audited courses (202 or not)
    duplicates: int  # decision records repeating an event_id already seen
    courses: tuple[CourseAudit, ...]
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def _decision_identity(event: Decision) -> tuple[object, ...]:
    return (event.event_id, event.event_type, getattr(event, "reason", None),
            getattr(event, "seats_taken", None))


def audit_decisions(
    events: Iterable[Event], accepted: Mapping[str, str], courses: Collection[str]
) -> DecisionAudit:
    """Audit the decisions of `courses`; `accepted` maps each 202 sign-up id to its course.

    Every sign-up in these courses must come from the caller, so that the log holds all
    their students: that is what makes accepted == min(capacity, students) exact.
    """
    scope = set(courses)
    capacity: dict[str, int] = {}
    by_signup: dict[str, dict[str, Decision]] = {}  # signup_id -> event_id -> first record
    duplicates = 0
    violations: list[str] = []
    term_courses: set[str] = set()
    for event in events:
        if event.course_id not in scope:
            continue
        if isinstance(event, CourseCreated):
            capacity.setdefault(event.course_id, event.capacity)
        elif isinstance(event, TERM_EVENTS):
            term_courses.add(event.course_id)
        if isinstance(event, StudentSignedUp | SignUpRejected | StudentWaitlisted):
            seen = by_signup.setdefault(event.signup_id, {})
            first = seen.get(event.event_id)
            if first is None:
                seen[event.event_id] = event
                continue
            duplicates += 1
            if _decision_identity(first) != _decision_identity(event):
                violations.append(f"event {event.event_id} repeated with another content: "
                                  f"{_decision_identity(first)} then {_decision_identity(event)}")

    missing = [s for s in accepted if s not in by_signup]
    if missing:
        violations.append(f"{len(missing)} sign-ups that got a 202 have no decision: "
                          f"{_examples(missing)}")
    conflicting = {s: d for s, d in by_signup.items() if len(d) > 1}
    if conflicting:
        violations.append(f"{len(conflicting)} sign-ups have more than one decision: " + _examples(
            f"{s} -> {[_decision_identity(e) for e in d.values()]}"
            for s, d in conflicting.items()))
    elsewhere = [s for s, c in accepted.items() if s in by_signup
                 and any(e.course_id != c for e in by_signup[s].values())]
    if elsewhere:
        violations.append(f"{len(elsewhere)} sign-ups decided for another course: "
                          f"{_examples(elsewhere)}")

    firsts = [next(iter(d.values())) for d in by_signup.values()]
    audits = []
    for course_id in sorted(scope):
        course_audit, problems = _audit_course(
            course_id, capacity.get(course_id), [e for e in firsts if e.course_id == course_id],
            course_id in term_courses)
        audits.append(course_audit)
        violations.extend(problems)
    return DecisionAudit(
        signups=len(accepted),
        decided=len(accepted) - len(missing),
        decisions=len(firsts),
        duplicates=duplicates,
        courses=tuple(audits),
        violations=tuple(violations),
    )


def _audit_course(
    course_id: str, capacity: int | None, decisions: list[Decision], term: bool = False
) -> tuple[CourseAudit, list[str]]:
    problems: list[str] = []
    signed_up = [e for e in decisions if isinstance(e, StudentSignedUp)]
    rejected = Counter(e.reason for e in decisions if isinstance(e, SignUpRejected))
    students = {student_in_course(e) for e in decisions}
    audit = CourseAudit(course_id, capacity, len(signed_up), len(students), dict(rejected))
    if term:
        return audit, problems  # proof.term_audit checks it, at every prefix
    holders = Counter(student_in_course(e) for e in signed_up)
    twice = [s for s, n in holders.items() if n > 1]
    if twice:
        problems.append(f"{course_id}: {len(twice)} students hold more than one seat: "
                        f"{_examples(twice)}")
    if capacity is None:
        if decisions:
            problems.append(f"{course_id}: {len(decisions)} decisions but no CourseCreated")
        return audit, problems
    if len(signed_up) > capacity:
        problems.append(f"{course_id}: overbooked, {len(signed_up)} accepted for "
                        f"{capacity} seats")
    elif len(signed_up) != min(capacity, len(students)):
        problems.append(f"{course_id}: {len(signed_up)} accepted, expected "
                        f"min(capacity {capacity}, {len(students)} students)")
    seats = Counter(e.seats_taken for e in signed_up)
    if sorted(seats) != list(range(1, len(signed_up) + 1)):
        # Two students with one seat number: the processor's seat count went back.
        repeated = sorted(n for n, k in seats.items() if k > 1)
        problems.append(f"{course_id}: seat numbers are not 1..{len(signed_up)} (the seat "
                        f"count went back); numbers given twice: {_examples(repeated)}")
    return audit, problems


def repeats(decided: Iterable[str], commanded: Iterable[str]) -> tuple[int, int]:
    """Decision records beyond the first per sign-up, split by cause: (answers to a
    repeated SignUp command, a command decided more than once); both name sign-up ids,
    one per decision record and one per SignUp command."""
    records, commands = Counter(decided), Counter(commanded)
    repeated = sum(min(n, commands[s]) - 1 for s, n in records.items() if n > 1)
    reprocessed = sum(max(0, n - max(commands[s], 1)) for s, n in records.items())
    return repeated, reprocessed


# ------------------------------------------------------------------ views


@dataclass(frozen=True)
class CourseRow:
    course_id: str
    title: str | None
    lecturer: str | None
    capacity: int | None
    enrolled: int
    dob_sum_days: int
    dob_min: date | None
    dob_max: date | None
    waitlist_capacity: int = 0
    waitlisted: int = 0


@dataclass(frozen=True)
class GlobalRow:
    courses: int
    enrollments: int
    dob_sum_days: int
    dob_min: date | None
    dob_max: date | None


@dataclass(frozen=True)
class DecisionRow:
    signup_id: str
    course_id: str
    status: str
    reason: str | None
    event_id: str


@dataclass(frozen=True)
class Views:
    """The read model, limited to some courses, plus the global row over every course."""

    courses: dict[str, CourseRow]
    global_row: GlobalRow
    decisions: dict[str, DecisionRow]
    # Accepted sign-ups per birth date (the age distribution), per course of the scope
    # and over every course.
    births: dict[str, dict[date, int]] = field(default_factory=dict)
    global_births: dict[date, int] = field(default_factory=dict)


def expected_views(events: Iterable[Event], courses: Collection[str]) -> Views:
    """The views a projection of the whole log must hold, restricted to `courses`.

    A sign-up's first decision stands (as in the projector); a promotion or withdrawal
    then moves it on only from the status it leaves, so a repeat changes nothing; the
    statistics count the students enrolled at the end, with the birth date each
    decision or promotion carried."""
    scope = set(courses)
    created: dict[str, CourseCreated] = {}
    changed: dict[str, CourseChanged] = {}
    firsts: dict[str, Decision] = {}
    status: dict[str, str] = {}
    born: dict[str, date] = {}
    for event in events:
        if isinstance(event, CourseCreated):
            created.setdefault(event.course_id, event)
        elif isinstance(event, CourseChanged) and event.course_id in created:
            changed[event.course_id] = event
        elif isinstance(event, StudentSignedUp | SignUpRejected | StudentWaitlisted):
            if event.signup_id not in firsts:
                firsts[event.signup_id] = event
                status[event.signup_id] = _STATUS[type(event)]
                if not isinstance(event, SignUpRejected):
                    born[event.signup_id] = event.date_of_birth
        elif isinstance(event, StudentPromoted | StudentWithdrew):
            was, becomes = _moves(event)
            if status.get(event.signup_id) == was:
                status[event.signup_id] = becomes
    enrolled = [(firsts[s].course_id, born[s]) for s, st in status.items() if st == "accepted"]
    per_course: dict[str, AgeAggregate] = {}
    births: dict[str, Counter[date]] = {}
    global_births: Counter[date] = Counter()
    everything = AgeAggregate()
    for course_id, dob in enrolled:
        per_course[course_id] = per_course.get(course_id, AgeAggregate()).add(dob)
        births.setdefault(course_id, Counter())[dob] += 1
        global_births[dob] += 1
        everything = everything.add(dob)
    waiting = Counter(firsts[s].course_id for s, st in status.items() if st == "waitlisted")
    rows = {}
    for course_id in scope & (set(created) | set(per_course)):
        c = changed.get(course_id) or created.get(course_id)
        agg = per_course.get(course_id, AgeAggregate())
        rows[course_id] = CourseRow(
            course_id, c.title if c else None, c.lecturer if c else None,
            c.capacity if c else None, agg.count, agg.sum_days, agg.min_dob, agg.max_dob,
            c.waitlist_capacity if c else 0, waiting[course_id])
    decisions = {
        e.signup_id: DecisionRow(
            e.signup_id, e.course_id, status[e.signup_id],
            e.reason if isinstance(e, SignUpRejected) else None, e.event_id)
        for e in firsts.values() if e.course_id in scope
    }
    return Views(rows, GlobalRow(len(created), everything.count, everything.sum_days,
                                 everything.min_dob, everything.max_dob), decisions,
                 {c: dict(counts) for c, counts in births.items() if c in scope},
                 dict(global_births))


_STATUS = {StudentSignedUp: "accepted", SignUpRejected: "rejected",
           StudentWaitlisted: "waitlisted"}


def _moves(event: StudentPromoted | StudentWithdrew) -> tuple[str, str]:
    if isinstance(event, StudentPromoted):
        return "waitlisted", "accepted"
    return ("accepted" if event.from_ == "enrolled" else "waitlisted"), "withdrawn"


def compare_views(expected: Views, actual: Views, label: str) -> list[str]:
    """What differs, one line per kind of difference; empty when the views are equal."""
    problems = []
    for course_id in sorted(set(expected.courses) | set(actual.courses)):
        want, got = expected.courses.get(course_id), actual.courses.get(course_id)
        if want != got:
            problems.append(f"{label}: course {course_id}: expected {want}, found {got}")
    if expected.global_row != actual.global_row:
        problems.append(f"{label}: global stats: expected {expected.global_row}, "
                        f"found {actual.global_row}")
    for course_id in sorted(set(expected.births) | set(actual.births)):
        if expected.births.get(course_id, {}) != actual.births.get(course_id, {}):
            problems.append(f"{label}: course {course_id}: birth-date counts differ")
    if expected.global_births != actual.global_births:
        problems.append(f"{label}: global birth-date counts differ")
    missing = sorted(set(expected.decisions) - set(actual.decisions))
    extra = sorted(set(actual.decisions) - set(expected.decisions))
    differing = sorted(s for s in set(expected.decisions) & set(actual.decisions)
                       if expected.decisions[s] != actual.decisions[s])
    if missing:
        problems.append(f"{label}: {len(missing)} decisions missing: {_examples(missing)}")
    if extra:
        problems.append(f"{label}: {len(extra)} decisions not in the log: {_examples(extra)}")
    if differing:
        problems.append(f"{label}: {len(differing)} decisions differ: " + _examples(
            f"{expected.decisions[s]} != {actual.decisions[s]}" for s in differing))
    return problems


# ------------------------------------------------------------------ e-mails


@dataclass(frozen=True)
class Mail:
    name: str
    event_id: str | None
    signup_id: str | None


@dataclass(frozen=True)
class MailAudit:
    decisions: int
    mailed: int  # decisions with at least one e-mail
    extra: int  # e-mails beyond the first per decision
    allowed_extra: int
    violations: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.violations


def audit_mails(
    decisions: Mapping[str, str], mails: Iterable[Mail], allowed_extra: int
) -> MailAudit:
    """`decisions` maps each decision's event_id to its sign-up id: one e-mail each."""
    mails = list(mails)
    counts = Counter(m.event_id for m in mails if m.event_id in decisions)
    missing = [e for e in decisions if counts[e] == 0]
    extra = sum(n - 1 for n in counts.values())
    ours = set(decisions.values())
    foreign = [m.name for m in mails if m.signup_id in ours and m.event_id not in decisions]
    violations = []
    if missing:
        violations.append(f"{len(missing)} decisions have no e-mail: {_examples(missing)}")
    if extra > allowed_extra:
        repeated = [e for e, n in counts.items() if n > 1]
        violations.append(f"{extra} duplicate e-mails, at most {allowed_extra} allowed: "
                          f"{_examples(repeated)}")
    if foreign:
        violations.append(f"{len(foreign)} e-mails for our sign-ups name an event that is not "
                          f"their decision: {_examples(foreign)}")
    return MailAudit(len(decisions), len(decisions) - len(missing), extra, allowed_extra,
                     tuple(violations))


class MailIndex:
    """The sink's .eml files by name; each file is parsed once (the sink renames complete
    files into place, so a name that exists never changes)."""

    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self.mails: dict[str, Mail] = {}
        self._parser = BytesHeaderParser(policy=default_policy)

    def count(self) -> int:
        try:
            return sum(1 for e in os.scandir(self.mail_dir) if e.name.endswith(".eml"))
        except FileNotFoundError:
            return 0

    def refresh(self) -> list[Mail]:
        try:
            names = [e.name for e in os.scandir(self.mail_dir) if e.name.endswith(".eml")]
        except FileNotFoundError:
            names = []
        for name in names:
            if name not in self.mails:
                self.mails[name] = self._read(name)
        return list(self.mails.values())

    def _read(self, name: str) -> Mail:
        with open(self.mail_dir / name, "rb") as handle:
            head = handle.read(16384)  # the headers; the body is of no interest
        headers = self._parser.parsebytes(head)
        event_id, signup_id = headers.get("X-Event-Id"), headers.get("X-Signup-Id")
        return Mail(name, str(event_id) if event_id else None,
                    str(signup_id) if signup_id else None)


# ------------------------------------------------------------------ the log


@dataclass(frozen=True, slots=True)
class Logged:
    partition: int
    offset: int
    timestamp_ms: int
    headers: tuple[tuple[str, bytes], ...]
    message: Message

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value.decode(errors="replace")
        return None


def generation_regressions(records: Iterable[Logged]) -> list[str]:
    """Places where a partition's committed records go back to an older consumer
    generation (the processor's `generation` header), in log order.

    The owner of a partition in generation g+1 has fenced the owner in g, so a record
    of generation g after one of g+1 is a write that a zombie got committed. Records
    without the header (written before it existed) are not judged.
    """
    newest: dict[int, tuple[int, int]] = {}  # partition -> (generation, offset)
    found = []
    for record in sorted(records, key=lambda r: (r.partition, r.offset)):
        header = record.header("generation")
        if header is None:
            continue
        generation = int(header)
        seen = newest.get(record.partition)
        if seen is not None and generation < seen[0]:
            found.append(f"partition {record.partition} offset {record.offset}: generation "
                         f"{generation} after {seen[0]} at offset {seen[1]}")
        else:
            newest[record.partition] = (generation, record.offset)
    return found


@dataclass(frozen=True)
class LogSnapshot:
    topic: str
    records: list[Logged]
    ends: dict[int, int]  # per partition, the end offset read up to
    data_ends: dict[int, int]  # per partition, the offset after its last record (no markers)
    undecodable: list[str]  # "partition:offset reason"
    seconds: float

    def events(self) -> list[Event]:
        return [r.message for r in self.records if isinstance(r.message, _EVENT_TYPES)]


_EVENT_TYPES = get_args(Event)  # every event type: a term's too


_INVALID_OFFSET = -1001  # librdkafka's "no position yet"


def read_log(
    bootstrap: str, topic: str = topics.EVENTS, keys: Collection[bytes] | None = None,
    timeout: float = 120.0, batch: int = 5000,
) -> LogSnapshot:
    """Every committed record of `topic`, from the first offset to the end offsets taken at
    the start (records of other keys than `keys` are skipped undecoded, when given)."""
    began = time.monotonic()
    consumer = Consumer({
        **client_config(),
        "bootstrap.servers": bootstrap,
        "group.id": f"chaos-audit-{uuid.uuid4()}",  # assign() only: the group is never joined
        "isolation.level": "read_committed",  # aborted transactions are not decisions
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "log_level": 3,
    })
    try:
        metadata = consumer.list_topics(topic, timeout=30).topics[topic]
        if metadata.error is not None:
            raise RuntimeError(f"{topic}: {metadata.error}")
        ends: dict[int, int] = {}
        starts: dict[int, int] = {}
        for p in sorted(metadata.partitions):
            starts[p], ends[p] = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=30)
        consumer.assign([TopicPartition(topic, p, starts[p]) for p in ends])
        records, undecodable, data_ends = _consume(
            consumer, topic, starts, ends, keys, began + timeout, batch)
    finally:
        consumer.close()
    return LogSnapshot(topic, records, ends, data_ends, undecodable, time.monotonic() - began)


def _consume(
    consumer: Consumer, topic: str, starts: dict[int, int], ends: dict[int, int],
    keys: Collection[bytes] | None, deadline: float, batch: int,
) -> tuple[list[Logged], list[str], dict[int, int]]:
    wanted = set(keys) if keys is not None else None
    records: list[Logged] = []
    undecodable: list[str] = []
    data_ends: dict[int, int] = {}
    done = {p for p in ends if starts[p] >= ends[p]}
    while len(done) < len(ends):
        if time.monotonic() > deadline:
            raise TimeoutError(f"reading {topic}: partitions {sorted(set(ends) - done)} did "
                               f"not reach their end offsets {ends} in time")
        for msg in consumer.consume(batch, 1.0):
            p, offset = msg.partition(), msg.offset()
            if msg.error() is not None or p is None or offset is None or offset >= ends[p]:
                continue
            data_ends[p] = max(data_ends.get(p, 0), offset + 1)
            if wanted is not None and msg.key() not in wanted:
                continue
            value = msg.value()
            try:
                message = decode(value or b"")
            except DecodeError as exc:
                undecodable.append(f"{p}:{offset} {exc}")
                continue
            records.append(Logged(p, offset, msg.timestamp()[1], _headers(msg.headers()),
                                  message))
        # The position steps over transaction markers, which carry no record.
        for tp in consumer.position([TopicPartition(topic, p) for p in ends]):
            if tp.offset != _INVALID_OFFSET and tp.offset >= ends[tp.partition]:
                done.add(tp.partition)
    return records, undecodable, data_ends


def _headers(raw: object) -> tuple[tuple[str, bytes], ...]:
    # confluent-kafka hands headers over as a list of (name, bytes | None) pairs.
    if not isinstance(raw, list):
        return ()
    return tuple((str(k), v if isinstance(v, bytes) else b"") for k, v in raw)


# ------------------------------------------------------------------ PostgreSQL


def read_views(conn: psycopg.Connection, courses: Collection[str], suffix: str = "") -> Views:
    """The views of `courses` (and the global row) from the live tables or, with
    suffix="_shadow", from a replay's shadow copies."""
    ids = sorted(courses)

    def table(name: str) -> sql.Identifier:
        return sql.Identifier(name + suffix)

    rows = conn.execute(sql.SQL(
        "SELECT course_id, title, lecturer, capacity, enrolled, dob_sum_days, dob_min, dob_max,"
        " waitlist_capacity, waitlisted FROM {} WHERE course_id = ANY(%s)").format(
            table("course_stats")), (ids,)).fetchall()
    course_rows = {r[0]: CourseRow(r[0], r[1], r[2], r[3], int(r[4]), int(r[5]), r[6], r[7],
                                   int(r[8]), int(r[9])) for r in rows}
    g = conn.execute(sql.SQL(
        "SELECT courses, enrollments, dob_sum_days, dob_min, dob_max FROM {} WHERE id"
    ).format(table("global_stats"))).fetchone()
    global_row = (GlobalRow(int(g[0]), int(g[1]), int(g[2]), g[3], g[4]) if g is not None
                  else GlobalRow(0, 0, 0, None, None))
    decisions = {r[0]: DecisionRow(r[0], r[1], r[2], r[3], r[4]) for r in conn.execute(sql.SQL(
        "SELECT signup_id, course_id, status, reason, event_id FROM {}"
        " WHERE course_id = ANY(%s)").format(table("signup_decisions")), (ids,))}
    births: dict[str, dict[date, int]] = {}
    for course_id, dob, n in conn.execute(sql.SQL(
            "SELECT course_id, dob, n FROM {} WHERE course_id = ANY(%s)").format(
                table("course_birth_dates")), (ids,)):
        births.setdefault(course_id, {})[dob] = int(n)
    global_births = {dob: int(n) for dob, n in conn.execute(sql.SQL(
        "SELECT dob, n FROM {}").format(table("global_birth_dates")))}
    return Views(course_rows, global_row, decisions, births, global_births)


def projection_positions(conn: psycopg.Connection, projection: str = "views") -> dict[int, int]:
    rows = conn.execute(
        "SELECT partition, next_offset FROM projection_offsets"
        " WHERE projection = %s AND topic = %s", (projection, topics.EVENTS))
    return {int(p): int(o) for p, o in rows}


def replay_views(kafka_bootstrap: str, database_url: str, courses: Collection[str]) -> Views:
    """A full replay of the event log into the shadow copies (the live views stay in
    place), read back for `courses`; the shadow copies are dropped afterwards."""
    from projections import store
    from projections.replay import rebuild
    from projections.settings import ReplaySettings

    settings = ReplaySettings(kafka_bootstrap_servers=kafka_bootstrap, database_url=database_url)
    rebuild(settings, swap=False, progress=False, restart=True)
    with psycopg.connect(database_url, autocommit=True) as conn:
        try:
            return read_views(conn, courses, store.SHADOW_SUFFIX)
        finally:
            store.drop_shadow(conn, settings.projection)
