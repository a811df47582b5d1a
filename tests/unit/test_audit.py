"""The chaos audit (proof/audit.py) on hand-made event logs: it passes a clean log and
catches every kind of broken guarantee it is there to catch."""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import replace
from datetime import UTC, date, datetime

from proof.audit import (
    CourseRow,
    Logged,
    Mail,
    audit_decisions,
    audit_mails,
    compare_views,
    expected_views,
    generation_regressions,
    repeats,
)
from schemas.messages import CourseCreated, Event, SignUpRejected, StudentSignedUp

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def course(course_id: str, capacity: int) -> CourseCreated:
    return CourseCreated(str(uuid.uuid4()), "CourseCreated", NOW, course_id, "cmd", "corr",
                         "Title", "Lecturer", capacity)


def accepted(course_id: str, email: str, seat: int, signup_id: str | None = None,
             dob: date = date(2000, 1, 1)) -> StudentSignedUp:
    return StudentSignedUp(str(uuid.uuid4()), "StudentSignedUp", NOW, course_id, "cmd", "corr",
                           signup_id or str(uuid.uuid4()), email, "Name", dob, seat, None)


def rejected(course_id: str, email: str, reason: str = "course_full",
             signup_id: str | None = None) -> SignUpRejected:
    return SignUpRejected(str(uuid.uuid4()), "SignUpRejected", NOW, course_id, "cmd", "corr",
                          signup_id or str(uuid.uuid4()), email, "Name", reason)


def signups(events: list[Event]) -> dict[str, str]:
    return {e.signup_id: e.course_id for e in events
            if isinstance(e, StudentSignedUp | SignUpRejected)}


def clean_log() -> list[Event]:
    """Course c1 (2 seats) overfilled by 3 students, one of whom tries twice; c2 underfilled."""
    a1, a2 = accepted("c1", "a@x.org", 1), accepted("c1", "b@x.org", 2)
    return [course("c1", 2), course("c2", 10), a1, a2,
            rejected("c1", "c@x.org"), rejected("c1", "A@X.org", "already_enrolled"),
            accepted("c2", "a@x.org", 1, dob=date(1990, 5, 17)), a1]  # a1 repeated: a duplicate


def test_a_clean_log_passes_and_repeats_count_as_duplicates() -> None:
    log = clean_log()
    audit = audit_decisions(log, signups(log), ["c1", "c2"])
    assert audit.ok, audit.violations
    assert (audit.signups, audit.decided, audit.duplicates) == (5, 5, 1)
    c1 = next(c for c in audit.courses if c.course_id == "c1")
    assert (c1.capacity, c1.accepted, c1.students) == (2, 2, 3)
    assert c1.rejected == {"course_full": 1, "already_enrolled": 1}


def test_two_different_decisions_for_one_signup_are_caught() -> None:
    log = clean_log()
    twice = rejected("c2", "d@x.org")
    log += [twice, accepted("c2", "d@x.org", 2, signup_id=twice.signup_id)]
    audit = audit_decisions(log, signups(log), ["c1", "c2"])
    assert not audit.ok
    assert any("more than one decision" in v and twice.signup_id in v for v in audit.violations)


def test_a_repeat_with_other_content_is_caught() -> None:
    log = clean_log()
    first = log[2]
    assert isinstance(first, StudentSignedUp)
    log.append(replace(first, seats_taken=7))
    audit = audit_decisions(log, signups(log), ["c1", "c2"])
    assert any("repeated with another content" in v for v in audit.violations)


def test_an_overbooked_course_is_caught() -> None:
    log = clean_log() + [accepted("c1", "e@x.org", 3)]
    audit = audit_decisions(log, signups(log), ["c1", "c2"])
    assert any("c1: overbooked, 3 accepted for 2 seats" in v for v in audit.violations)


def test_a_signup_without_decision_is_caught() -> None:
    log = clean_log()
    lost = str(uuid.uuid4())
    audit = audit_decisions(log, {**signups(log), lost: "c2"}, ["c1", "c2"])
    assert audit.decided == audit.signups - 1
    assert any("have no decision" in v and lost in v for v in audit.violations)


def test_a_seat_left_empty_while_students_were_turned_away_is_caught() -> None:
    log: list[Event] = [course("c", 3), accepted("c", "a@x.org", 1), rejected("c", "b@x.org")]
    audit = audit_decisions(log, signups(log), ["c"])
    assert any("1 accepted, expected min(capacity 3, 2 students)" in v for v in audit.violations)


def test_one_student_in_two_seats_is_caught_whatever_the_case() -> None:
    log: list[Event] = [course("c", 3), accepted("c", "a@x.org", 1),
                        accepted("c", " A@X.ORG", 2), accepted("c", "b@x.org", 3)]
    audit = audit_decisions(log, signups(log), ["c"])
    assert any("hold more than one seat" in v for v in audit.violations)


def test_seat_numbers_must_run_from_one() -> None:
    log: list[Event] = [course("c", 3), accepted("c", "a@x.org", 1), accepted("c", "b@x.org", 1)]
    audit = audit_decisions(log, signups(log), ["c"])
    assert any("seat numbers are not 1..2" in v and "given twice: 1" in v
               for v in audit.violations)


def test_repeats_are_split_into_repeated_commands_and_reprocessing() -> None:
    # s1: two commands (a client retry), two records; s2: one command decided three times.
    decided = ["s1", "s1", "s2", "s2", "s2", "s3"]
    commanded = ["s1", "s1", "s2", "s3"]
    assert repeats(decided, commanded) == (1, 2)


def test_a_decision_for_an_unknown_course_is_caught() -> None:
    log: list[Event] = [accepted("ghost", "a@x.org", 1)]
    audit = audit_decisions(log, signups(log), ["ghost"])
    assert any("no CourseCreated" in v for v in audit.violations)


def test_expected_views_follow_the_first_decision_and_every_course() -> None:
    log = clean_log() + [course("elsewhere", 5), accepted("elsewhere", "z@x.org", 1,
                                                           dob=date(1980, 2, 29))]
    views = expected_views(log, ["c1", "c2"])
    assert set(views.courses) == {"c1", "c2"}
    c1 = views.courses["c1"]
    assert (c1.capacity, c1.enrolled, c1.dob_min, c1.dob_max) == (2, 2, date(2000, 1, 1),
                                                                   date(2000, 1, 1))
    assert c1.dob_sum_days == 2 * date(2000, 1, 1).toordinal()
    # The global row counts every course of the log, not only the audited ones.
    assert (views.global_row.courses, views.global_row.enrollments) == (3, 4)
    assert views.global_row.dob_min == date(1980, 2, 29)
    assert len(views.decisions) == 5
    assert compare_views(views, views, "same") == []


def test_compare_views_names_each_difference() -> None:
    log = clean_log()
    want = expected_views(log, ["c1", "c2"])
    c1 = want.courses["c1"]
    some_id = next(iter(want.decisions))
    got = replace(
        want,
        courses={**want.courses, "c1": CourseRow(**{**c1.__dict__, "enrolled": 3})},
        global_row=replace(want.global_row, enrollments=want.global_row.enrollments + 1),
        decisions={k: v for k, v in want.decisions.items() if k != some_id},
    )
    problems = compare_views(want, got, "live")
    assert any(p.startswith("live: course c1") for p in problems)
    assert any(p.startswith("live: global stats") for p in problems)
    one_born = next(iter(want.births["c1"]))
    miscounted = replace(want, births={**want.births, "c1": {**want.births["c1"],
                                                             one_born: 99}},
                         global_births={})
    assert compare_views(want, miscounted, "live") == [
        "live: course c1: birth-date counts differ", "live: global birth-date counts differ"]
    assert any("1 decisions missing" in p and some_id in p for p in problems)


def mail(event_id: str | None, signup_id: str | None) -> Mail:
    return Mail(f"{uuid.uuid4().hex}.eml", event_id, signup_id)


def test_mails_one_per_decision_with_bounded_duplicates() -> None:
    decisions = {"e1": "s1", "e2": "s2"}
    mails = [mail("e1", "s1"), mail("e2", "s2"), mail("e2", "s2"), mail("other", "s9")]
    assert audit_mails(decisions, mails, allowed_extra=1).ok
    strict = audit_mails(decisions, mails, allowed_extra=0)
    assert not strict.ok and strict.extra == 1
    assert any("1 duplicate e-mails" in v for v in strict.violations)


def test_a_missing_or_wrong_mail_is_caught() -> None:
    audit = audit_mails({"e1": "s1", "e2": "s2"}, [mail("e1", "s1"), mail("e9", "s2")], 5)
    assert audit.mailed == 1
    assert any("have no e-mail: e2" in v for v in audit.violations)
    assert any("not their decision" in v for v in audit.violations)


def logged(partition: int, offset: int, generation: int | None) -> Logged:
    headers = () if generation is None else (("generation", str(generation).encode()),)
    return Logged(partition, offset, 0, headers, course("c", 1))


def test_generations_may_only_grow_along_a_partition() -> None:
    clean = [logged(0, 0, 1), logged(0, 1, 1), logged(0, 2, 3), logged(1, 0, 4),
             logged(1, 1, None), logged(1, 2, 4)]
    assert generation_regressions(clean) == []
    zombie = [logged(0, 0, 1), logged(0, 1, 3), logged(0, 2, 1), logged(1, 0, 1)]
    assert generation_regressions(list(reversed(zombie))) == [
        "partition 0 offset 2: generation 1 after 3 at offset 1"]


def test_the_expected_views_of_a_term_count_who_is_enrolled_and_waiting_at_the_end() -> None:
    from tests.unit.test_term_audit import term_log

    log = term_log(7)
    views = expected_views(log, ["intro"])
    row = views.courses["intro"]
    last_seats = [e.seats_taken for e in log if hasattr(e, "seats_taken")][-1]
    statuses = Counter(d.status for d in views.decisions.values())
    assert row.enrolled == statuses["accepted"] == last_seats
    assert row.waitlisted == statuses["waitlisted"]
    assert statuses["withdrawn"] > 0 and views.global_row.enrollments >= row.enrolled
    assert sum(views.births["intro"].values()) == row.enrolled
    # The decisions audit leaves a term's course to the term audit: no false alarm.
    signups = {d.signup_id: "intro" for d in views.decisions.values()}
    assert audit_decisions(log, signups, ["intro"]).ok
