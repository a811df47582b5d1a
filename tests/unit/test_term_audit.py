"""The term audit accepts what the term's decider writes and names each broken invariant."""

from __future__ import annotations

import random
from dataclasses import replace

from proof.term_audit import audit_term
from schemas.messages import (
    Command,
    CourseCreated,
    Event,
    StudentPromoted,
    StudentWaitlisted,
    StudentWithdrew,
)
from tests.unit.test_term import change, create, new_decider, signup, withdraw


def term_log(seed: int, steps: int = 300) -> list[Event]:
    """A busy course written by the decider itself: sign-ups, withdrawals, changes."""
    rng = random.Random(seed)
    d = new_decider()
    log: list[Event] = list(d.decide(create(3, waitlist=4)))
    signups: list[str] = []
    for _ in range(steps):
        roll = rng.random()
        cmd: Command
        if roll < 0.55 or not signups:
            cmd = signup(rng.randrange(12), rng.randrange(3))
            signups.append(cmd.signup_id)
        elif roll < 0.9:
            cmd = withdraw(rng.choice(signups))
        else:
            cmd = change(capacity=rng.randint(1, 6), waitlist=rng.randint(0, 4))
        log += d.decide(cmd)
    return log


def test_the_deciders_own_logs_pass_with_promotions_and_withdrawals() -> None:
    for seed in range(20):
        log = term_log(seed)
        result = audit_term(log)
        assert result.ok, result.violations
        assert result.promotions and result.withdrawals and result.waitlisted


def test_a_repeated_record_counts_once() -> None:
    log = term_log(1)
    assert audit_term(log + log[5:40]).ok


def _first(log: list[Event], kind: type) -> int:
    return next(i for i, e in enumerate(log) if isinstance(e, kind))


def test_a_promotion_out_of_order_is_named() -> None:
    log = term_log(2)
    i = next(i for i, e in enumerate(log) if isinstance(e, StudentPromoted)
             and sum(isinstance(x, StudentWaitlisted) for x in log[:i]) >= 2)
    promoted = log[i]
    assert isinstance(promoted, StudentPromoted)
    later = next(e for e in log[:i] if isinstance(e, StudentWaitlisted)
                 and e.signup_id != promoted.signup_id)
    broken = [*log[:i], replace(promoted, signup_id=later.signup_id), *log[i + 1:]]
    assert any("waited longest" in v for v in audit_term(broken).violations)


def test_a_lost_promotion_leaves_a_free_seat_with_students_waiting() -> None:
    log = term_log(3)
    i = _first(log, StudentPromoted)
    assert any("wait while" in v for v in audit_term(log[:i] + log[i + 1:]).violations)


def test_a_promotion_without_a_freed_seat_is_named() -> None:
    log = term_log(4)
    i = _first(log, StudentPromoted)
    promoted = log[i]
    broken = [*log[:i], replace(promoted, causation_id="someone-else"), *log[i + 1:]]
    assert any("freed the seat" in v for v in audit_term(broken).violations)


def test_a_withdrawal_of_nobody_and_a_wrong_seat_count_are_named() -> None:
    log = term_log(5)
    i = _first(log, StudentWithdrew)
    withdrew = log[i]
    assert isinstance(withdrew, StudentWithdrew)
    broken = [*log[:i], replace(withdrew, signup_id="ghost", seats_taken=99), *log[i + 1:]]
    violations = audit_term(broken).violations
    assert any("without a place" in v for v in violations)
    assert any("recount" in v for v in violations)


def test_waitlisting_beyond_the_list_is_named() -> None:
    log = term_log(6)
    i = _first(log, StudentWaitlisted)
    created = log[0]
    assert isinstance(created, CourseCreated)
    broken = [replace(created, waitlist_capacity=0), *log[1:]]
    assert any("full waiting list" in v for v in audit_term(broken).violations)
    assert i > 0
