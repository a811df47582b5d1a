"""A registration term against a real broker: kill -9 of the processor in the middle of
withdrawals. No promotion is lost or doubled, and every freed seat goes to the right
student: the committed log, read in order, is what the pure decider (the reference)
decides for the same commands, and `proof.term_audit` finds every invariant at every
prefix of it. Shares the harness of test_processor_crash.py.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from datetime import date

import pytest

from course_processor.deciding.handler import Decider
from proof.term_audit import audit_term
from schemas.codec import decode, encode
from schemas.messages import (
    ChangeCourse,
    Command,
    CreateCourse,
    Event,
    SignUp,
    StudentPromoted,
    StudentWithdrew,
    Withdraw,
    withdrawal_id_for,
)
from stack.waiting import WaitTimeout, wait_until
from tests.integration.test_processor_crash import (
    SESSION_TIMEOUT,
    Cluster,
    CommandProducer,
    EventLog,
    _now,
    assert_disk_is_committed_changelog,
    cluster,  # noqa: F401 - the fixture
    showing_logs,
)
from tests.support import event_in

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

SECRET = b"integration-test-secret"  # the workers' PSEUDONYM_SECRET


def term_commands(courses: int, seed: int) -> tuple[list[tuple[str, bytes]], list[Command],
                                                   list[str]]:
    """Per course: capacity 4, waiting list 4, 14 students signing up (4 seats, 4 waiting,
    the rest rejected), then a wave of withdrawals (seats, waiting places, rejected and
    repeated ones) with a raised capacity in the middle."""
    rng = random.Random(seed)
    sign_ups: list[Command] = []
    withdrawals: list[Command] = []
    ids = []
    for n in range(courses):
        course_id = f"term-{uuid.uuid4().hex[:10]}"
        ids.append(course_id)
        sign_ups.append(CreateCourse(str(uuid.uuid4()), course_id, "Term", "Ada", 4, _now(),
                                     str(uuid.uuid4()), waitlist_capacity=4))
        mine = []
        for i in range(14):
            cmd = SignUp(str(uuid.uuid4()), str(uuid.uuid4()), course_id,
                         f"s{i}.{uuid.uuid4().hex[:6]}@example.org", "Student",
                         date(1990 + i, 1 + n % 12, 1), _now(), str(uuid.uuid4()))
            sign_ups.append(cmd)
            mine.append(cmd.signup_id)
        leaving = rng.sample(mine, 9)
        for j, signup_id in enumerate(leaving):
            withdrawals.append(Withdraw(withdrawal_id_for(course_id, signup_id), signup_id,
                                        course_id, _now(), str(uuid.uuid4())))
            if j == 4:
                withdrawals.append(change_course(course_id, capacity=6))
            if rng.random() < 0.3:  # the same withdrawal again: the same command
                withdrawals.append(withdrawals[-1])
    rng.shuffle(withdrawals)  # courses interleave; each course keeps its own order below
    per_course: dict[str, list[Command]] = defaultdict(list)
    for later in withdrawals:
        per_course[later.course_id].append(later)
    ordered = sign_ups + [c for cmds in per_course.values() for c in cmds]
    return [(c.course_id, encode(c)) for c in ordered], ordered, ids


def change_course(course_id: str, capacity: int) -> Command:
    return ChangeCourse(str(uuid.uuid4()), course_id, _now(), str(uuid.uuid4()),
                        capacity=capacity)


def reference(commands: list[Command]) -> dict[str, list[tuple[str, str]]]:
    """What the pure decider writes for these commands, per course: (type, sign-up)."""
    decider = Decider({}, {}, {}, SECRET, places={}, waiting={})
    out: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for cmd in commands:
        for event in decider.decide(cmd):
            out[event.course_id].append((type(event).__name__, getattr(event, "signup_id", "")))
    return out


def committed(log: EventLog) -> dict[str, list[Event]]:
    """Each course's committed events in log order, a repeated event_id once."""
    out: dict[str, list[Event]] = {}
    for course, records in log.records.items():
        seen: set[str] = set()
        events = []
        for record in records:
            event = event_in(record.value)
            if event.event_id not in seen:
                seen.add(event.event_id)
                events.append(event)
        out[course.decode()] = events
    return out


def test_kill_9_in_the_middle_of_withdrawals_loses_and_doubles_no_promotion(
    cluster: Cluster,  # noqa: F811
) -> None:
    values, commands, courses = term_commands(courses=6, seed=11)
    split = next(i for i, (_, v) in enumerate(values) if isinstance(decode(v), Withdraw))
    producer, log = CommandProducer(cluster.servers), EventLog(cluster.servers, courses)
    worker = cluster.start("term-1", store="term")
    expected = reference(commands)
    total = sum(len(v) for v in expected.values())
    with showing_logs(cluster, log):
        cluster.wait_sharing(worker, timeout=SESSION_TIMEOUT * 6)
        producer.send_all(values[:split])
        withdrawals = values[split:]
        for i, wave in enumerate((withdrawals[: len(withdrawals) // 2],
                                  withdrawals[len(withdrawals) // 2:])):
            producer.send_all(wave)
            log.read(random.uniform(0.2, 1.5))
            worker.kill()  # in the middle of the withdrawals
            worker = cluster.start(f"term-{i + 2}", store="term")
            cluster.wait_sharing(worker, timeout=SESSION_TIMEOUT * 6)

        def all_in() -> bool:
            log.read(0.5)
            return sum(len(v) for v in committed(log).values()) >= total
        try:
            wait_until(all_in, 90, f"{total} events")
        except WaitTimeout:
            found = committed(log)
            for course in courses:
                got = [(type(e).__name__, getattr(e, "signup_id", "")[:6])
                       for e in found.get(course, [])]
                want = [(k, s[:6]) for k, s in expected[course]]
                print(course, len(got), len(want))
                print("  got ", got)
                print("  want", want)
            raise
        found = committed(log)
        for course in courses:
            got = [(type(e).__name__, getattr(e, "signup_id", "")) for e in found[course]]
            assert got == expected[course], course
        result = audit_term(e for c in courses for e in found[c])
        assert result.ok, result.violations
        promotions = sum(isinstance(e, StudentPromoted) for c in courses for e in found[c])
        withdrew = sum(isinstance(e, StudentWithdrew) for c in courses for e in found[c])
        assert promotions > 0 and withdrew > 0
        cluster.stop_all()
        report = assert_disk_is_committed_changelog(cluster)
    print("term audit", result, report)
